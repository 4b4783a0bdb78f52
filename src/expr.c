/*-------------------------------------------------------------------------
 *
 * expr.c
 *	  JavaScript expressions (Duktape) and {{ expr }} / ${ expr } templates.
 *
 * One Duktape heap per backend, created on first use and kept for the life
 * of the backend.  Each expression of a flow version is compiled once into
 * a function `function (event) { with (this) { return (EXPR); } }`, stored
 * in the heap stash under the flow version's cache key, and called with the
 * run's context object as `this`, so context variables are in scope by name.
 *
 * Sandbox:
 *	  - a token screen (not a parser) refuses loops, function definitions,
 *		statements, ";" and unbalanced brackets before Duktape compiles;
 *	  - eval, Function, the Function constructor and the Duktape object are
 *		removed, and every built-in is frozen, so one run cannot leave
 *		anything behind for another;
 *	  - Duktape has no I/O bindings of its own and we add none;
 *	  - the heap allocator counts bytes, and any single call into the heap
 *		may grow it by at most flow_engine.expression_memory_limit.
 *
 * Error rules: every call into Duktape goes through duk_safe_call, so a
 * JavaScript error never unwinds through PostgreSQL code, and no palloc or
 * ereport happens while Duktape is on the C stack.  Results come back as
 * JSON text and are copied out after the safe call returns.
 *
 * Transactions and locks: none.  This file touches no table.
 *
 *-------------------------------------------------------------------------
 */
#include "flow_engine.h"

#include <duktape.h>

#include "lib/stringinfo.h"
#include "utils/builtins.h"
#include "utils/memutils.h"

/* ---------------------------------------------------------------------
 * The heap and its counting allocator
 * ---------------------------------------------------------------------
 */
static duk_context *fe_duk = NULL;
static size_t fe_duk_bytes = 0;		/* bytes allocated by the heap now */
static size_t fe_duk_base = 0;		/* bytes at the start of this call */
static bool fe_duk_limited = false;

typedef struct FeAllocHeader
{
	size_t		size;
	size_t		pad;			/* keeps 16-byte alignment */
} FeAllocHeader;

static bool
fe_alloc_allowed(size_t grow)
{
	size_t		limit = (size_t) fe_expr_memory_limit_kb * 1024;

	if (!fe_duk_limited)
		return true;
	return fe_duk_bytes + grow <= fe_duk_base + limit;
}

static void *
fe_duk_alloc(void *udata, duk_size_t size)
{
	FeAllocHeader *h;

	if (!fe_alloc_allowed(size))
		return NULL;
	h = malloc(sizeof(FeAllocHeader) + size);
	if (h == NULL)
		return NULL;
	h->size = size;
	fe_duk_bytes += size;
	return h + 1;
}

static void *
fe_duk_realloc(void *udata, void *ptr, duk_size_t size)
{
	FeAllocHeader *h;
	size_t		old;

	if (ptr == NULL)
		return fe_duk_alloc(udata, size);
	h = ((FeAllocHeader *) ptr) - 1;
	old = h->size;
	if (size > old && !fe_alloc_allowed(size - old))
		return NULL;
	h = realloc(h, sizeof(FeAllocHeader) + size);
	if (h == NULL)
		return NULL;
	h->size = size;
	fe_duk_bytes = fe_duk_bytes - old + size;
	return h + 1;
}

static void
fe_duk_free(void *udata, void *ptr)
{
	FeAllocHeader *h;

	if (ptr == NULL)
		return;
	h = ((FeAllocHeader *) ptr) - 1;
	fe_duk_bytes -= h->size;
	free(h);
}

/*
 * Duktape calls this only for an error thrown outside any protected call,
 * which our code never does.  The heap can no longer be trusted, so end the
 * backend cleanly rather than abort() the postmaster's child.
 */
static void
fe_duk_fatal(void *udata, const char *msg)
{
	ereport(FATAL,
			(errcode(ERRCODE_INTERNAL_ERROR),
			 errmsg("flow_engine expression engine failed: %s",
					msg ? msg : "unknown error")));
}

/*
 * Run once per heap: strip what could escape the sandbox or carry state
 * from one run to the next, then freeze every built-in.  This is our own
 * code, so it may use the statements that expressions may not.
 */
static const char *fe_sandbox_js =
"(function () {\n"
"  var g = this;\n"
"  delete g.eval; delete g.Duktape; delete g.print; delete g.alert;\n"
"  delete g.require; delete g.Function.prototype.constructor;\n"
"  var F = g.Function; delete g.Function;\n"
"  var seen = [];\n"
"  function freeze(o) {\n"
"    if (o === null || (typeof o !== 'object' && typeof o !== 'function')) return;\n"
"    if (seen.indexOf(o) >= 0) return;\n"
"    seen.push(o);\n"
"    var names = Object.getOwnPropertyNames(o);\n"
"    for (var i = 0; i < names.length; i++) {\n"
"      var d = Object.getOwnPropertyDescriptor(o, names[i]);\n"
"      if (d && 'value' in d) freeze(d.value);\n"
"    }\n"
"    var p = Object.getPrototypeOf(o);\n"
"    if (p) freeze(p);\n"
"    Object.freeze(o);\n"
"  }\n"
"  var names = Object.getOwnPropertyNames(g);\n"
"  for (var i = 0; i < names.length; i++) freeze(g[names[i]]);\n"
"  freeze(F.prototype);\n"
"  Object.freeze(g);\n"
"})";

static duk_ret_t
fe_sandbox_setup(duk_context *ctx, void *udata)
{
	duk_push_string(ctx, fe_sandbox_js);
	duk_push_string(ctx, "flow_engine sandbox");
	duk_compile(ctx, DUK_COMPILE_EVAL);
	duk_call(ctx, 0);			/* evaluates to the function */
	duk_push_global_object(ctx);
	duk_call_method(ctx, 0);
	duk_pop(ctx);

	duk_push_heap_stash(ctx);
	duk_push_object(ctx);
	duk_put_prop_string(ctx, -2, "flows");
	duk_push_array(ctx);
	duk_put_prop_string(ctx, -2, "scopes");
	duk_pop(ctx);
	return 0;
}

static duk_context *
fe_heap(void)
{
	if (fe_duk == NULL)
	{
		duk_context *ctx;

		ctx = duk_create_heap(fe_duk_alloc, fe_duk_realloc, fe_duk_free,
							  NULL, fe_duk_fatal);
		if (ctx == NULL)
			ereport(ERROR,
					(errcode(ERRCODE_OUT_OF_MEMORY),
					 errmsg("could not create the expression engine heap")));
		if (duk_safe_call(ctx, fe_sandbox_setup, NULL, 0, 1) != DUK_EXEC_SUCCESS)
		{
			char	   *msg = pstrdup(duk_safe_to_string(ctx, -1));

			duk_destroy_heap(ctx);
			ereport(ERROR,
					(errcode(ERRCODE_INTERNAL_ERROR),
					 errmsg("could not set up the expression sandbox: %s", msg)));
		}
		duk_pop(ctx);
		fe_duk = ctx;
	}
	return fe_duk;
}

/*
 * Call fn under duk_safe_call with the memory limit armed.  On success the
 * result (if any) is on top of the stack; on failure the error is, and
 * *error receives its text (copied after the safe call).
 */
static bool
fe_protected(duk_safe_call_function fn, void *udata, char **error)
{
	duk_context *ctx = fe_heap();
	duk_int_t	rc;

	duk_set_top(ctx, 0);
	fe_duk_base = fe_duk_bytes;
	fe_duk_limited = true;
	rc = duk_safe_call(ctx, fn, udata, 0, 1);
	fe_duk_limited = false;
	if (rc != DUK_EXEC_SUCCESS)
	{
		if (error)
			*error = pstrdup(duk_safe_to_string(ctx, -1));
		duk_set_top(ctx, 0);
		return false;
	}
	return true;
}

/* Copy the string on top of the stack out (NULL means JSON null). */
static char *
fe_take_json(void)
{
	const char *s = duk_get_string(fe_duk, -1);
	char	   *r = pstrdup(s ? s : "null");

	duk_set_top(fe_duk, 0);
	return r;
}

/* ---------------------------------------------------------------------
 * The token screen
 * ---------------------------------------------------------------------
 */
typedef struct FeForbidden
{
	const char *word;
	const char *why;
} FeForbidden;

static const FeForbidden fe_forbidden[] = {
	{"for", "loops are not allowed in expressions"},
	{"while", "loops are not allowed in expressions"},
	{"do", "loops are not allowed in expressions"},
	{"function", "function definitions are not allowed in expressions"},
	{"class", "class definitions are not allowed in expressions"},
	{"async", "function definitions are not allowed in expressions"},
	{"await", "asynchronous code is not allowed in expressions"},
	{"yield", "generators are not allowed in expressions"},
	{"eval", "eval is not available in expressions"},
	{"Function", "the Function constructor is not available in expressions"},
	{"if", "statements are not allowed in expressions; use the ?: operator"},
	{"else", "statements are not allowed in expressions; use the ?: operator"},
	{"var", "declarations are not allowed in expressions"},
	{"let", "declarations are not allowed in expressions"},
	{"const", "declarations are not allowed in expressions"},
	{"return", "statements are not allowed in expressions"},
	{"throw", "statements are not allowed in expressions"},
	{"try", "statements are not allowed in expressions"},
	{"catch", "statements are not allowed in expressions"},
	{"finally", "statements are not allowed in expressions"},
	{"switch", "statements are not allowed in expressions"},
	{"case", "statements are not allowed in expressions"},
	{"default", "statements are not allowed in expressions"},
	{"with", "statements are not allowed in expressions"},
	{"break", "statements are not allowed in expressions"},
	{"continue", "statements are not allowed in expressions"},
	{"debugger", "statements are not allowed in expressions"},
	{"import", "modules are not available in expressions"},
	{"export", "modules are not available in expressions"},
	{"Duktape", "the Duktape object is not available in expressions"},
	{NULL, NULL}
};

static bool
fe_ident_start(unsigned char c)
{
	return isalpha(c) || c == '_' || c == '$' || c >= 0x80;
}

static bool
fe_ident_char(unsigned char c)
{
	return fe_ident_start(c) || isdigit(c);
}

/*
 * Refuse what the sandbox does not allow.  Returns NULL when the text may
 * be compiled, else a message (a full sentence) saying why not.  This is a
 * screen over tokens: Duktape's compiler is the parser.
 */
char *
FeExprCheckSyntax(const char *e)
{
	char		stack[256];
	int			depth = 0;
	bool		after_value = false;	/* '/' after a value is division */
	bool		any = false;
	const char *p = e;

	while (*p)
	{
		unsigned char c = (unsigned char) *p;

		if (isspace(c))
		{
			p++;
			continue;
		}
		if (c == '/' && p[1] == '/')
		{
			while (*p && *p != '\n')
				p++;
			continue;
		}
		if (c == '/' && p[1] == '*')
		{
			const char *end = strstr(p + 2, "*/");

			if (end == NULL)
				return pstrdup("The expression has an unterminated comment.");
			p = end + 2;
			continue;
		}
		any = true;
		if (c == '\'' || c == '"')
		{
			p++;
			while (*p && (unsigned char) *p != c)
			{
				if (*p == '\\' && p[1])
					p++;
				p++;
			}
			if (!*p)
				return pstrdup("The expression has an unterminated string.");
			p++;
			after_value = true;
			continue;
		}
		if (c == '`')
			return pstrdup("Template literals are not supported in expressions; use string concatenation.");
		if (c == '/' && !after_value)
		{
			bool		in_class = false;

			p++;
			while (*p && (*p != '/' || in_class) && *p != '\n')
			{
				if (*p == '\\' && p[1])
					p++;
				else if (*p == '[')
					in_class = true;
				else if (*p == ']')
					in_class = false;
				p++;
			}
			if (*p != '/')
				return pstrdup("The expression has an unterminated regular expression.");
			p++;
			while (isalpha((unsigned char) *p))
				p++;
			after_value = true;
			continue;
		}
		if (fe_ident_start(c))
		{
			const char *start = p;
			int			len;
			const FeForbidden *f;

			while (*p && fe_ident_char((unsigned char) *p))
				p++;
			len = p - start;
			for (f = fe_forbidden; f->word; f++)
			{
				if ((int) strlen(f->word) == len && strncmp(f->word, start, len) == 0)
				{
					/* a property name after '.' is fine: x.default */
					const char *q = start - 1;

					while (q >= e && isspace((unsigned char) *q))
						q--;
					if (q >= e && *q == '.')
						break;
					return psprintf("\"%s\": %s.", f->word, f->why);
				}
			}
			after_value = true;
			continue;
		}
		if (isdigit(c) || (c == '.' && isdigit((unsigned char) p[1])))
		{
			while (*p && (isalnum((unsigned char) *p) || *p == '.' ||
						  ((*p == '+' || *p == '-') && (p[-1] == 'e' || p[-1] == 'E'))))
				p++;
			after_value = true;
			continue;
		}
		if (c == '(' || c == '[' || c == '{')
		{
			if (depth >= (int) sizeof(stack))
				return pstrdup("The expression nests brackets too deeply.");
			stack[depth++] = (c == '(') ? ')' : (c == '[') ? ']' : '}';
			after_value = false;
			p++;
			continue;
		}
		if (c == ')' || c == ']' || c == '}')
		{
			if (depth == 0 || stack[depth - 1] != (char) c)
				return psprintf("The expression has an unbalanced \"%c\".", c);
			depth--;
			after_value = true;
			p++;
			continue;
		}
		if (c == ';')
			return pstrdup("\";\": statements are not allowed in expressions.");
		if (c == '=' && p[1] == '>')
			return pstrdup("\"=>\": function definitions are not allowed in expressions.");
		/* any other operator or punctuation */
		after_value = false;
		p++;
	}
	if (depth > 0)
		return psprintf("The expression is missing a closing \"%c\".", stack[depth - 1]);
	if (!any)
		return pstrdup("The expression is empty.");
	return NULL;
}

/* ---------------------------------------------------------------------
 * Compilation
 * ---------------------------------------------------------------------
 */
static char *
fe_wrap(const char *expr)
{
	return psprintf("function (event) { with (this) { return (%s\n); } }", expr);
}

typedef struct FeCompileArg
{
	const char *src;
} FeCompileArg;

static duk_ret_t
fe_compile_one(duk_context *ctx, void *udata)
{
	FeCompileArg *a = (FeCompileArg *) udata;

	duk_push_string(ctx, a->src);
	duk_push_string(ctx, "expression");
	duk_compile(ctx, DUK_COMPILE_FUNCTION);
	return 1;
}

/*
 * Screen and compile one expression, discarding the result.  Returns NULL
 * if it is acceptable, else a full-sentence message.
 */
char *
FeExprCompileCheck(const char *expr)
{
	char	   *why = FeExprCheckSyntax(expr);

	if (why)
		return why;
	return FeExprCompileOnly(expr);
}

/*
 * Compile without the token screen: for expressions flow_engine assembles
 * around user text that has been screened on its own.
 */
char *
FeExprCompileOnly(const char *expr)
{
	FeCompileArg a;
	char	   *err = NULL;

	a.src = fe_wrap(expr);
	if (!fe_protected(fe_compile_one, &a, &err))
		return psprintf("%s.", err);
	duk_set_top(fe_duk, 0);
	return NULL;
}

typedef struct FeBindArg
{
	const char *key;
	int			n;
	char	  **srcs;
} FeBindArg;

static duk_ret_t
fe_bind_flow(duk_context *ctx, void *udata)
{
	FeBindArg  *a = (FeBindArg *) udata;
	int			i;

	duk_push_heap_stash(ctx);
	duk_get_prop_string(ctx, -1, "flows");
	duk_push_array(ctx);
	for (i = 0; i < a->n; i++)
	{
		/* a version that validated compiles; stay safe if one does not */
		duk_push_string(ctx, a->srcs[i]);
		duk_push_string(ctx, "expression");
		if (duk_pcompile(ctx, DUK_COMPILE_FUNCTION) != 0)
		{
			duk_pop(ctx);
			duk_push_undefined(ctx);
		}
		duk_put_prop_index(ctx, -2, i);
	}
	duk_put_prop_string(ctx, -2, a->key);
	return 0;
}

/* Compile all expressions of a flow version into the heap stash. */
void
FeExprBindFlow(const char *cache_key, List *exprs)
{
	FeBindArg	a;
	ListCell   *lc;
	int			i = 0;
	char	   *err = NULL;

	a.key = cache_key;
	a.n = list_length(exprs);
	a.srcs = palloc0(sizeof(char *) * (a.n + 1));
	foreach(lc, exprs)
	{
		FeExprSource *s = (FeExprSource *) lfirst(lc);

		a.srcs[i++] = fe_wrap(s->text);
	}
	if (!fe_protected(fe_bind_flow, &a, &err))
		ereport(ERROR,
				(errcode(ERRCODE_OUT_OF_MEMORY),
				 errmsg("could not compile the expressions of a flow: %s", err)));
	duk_set_top(fe_duk, 0);
}

static duk_ret_t
fe_forget_flow(duk_context *ctx, void *udata)
{
	duk_push_heap_stash(ctx);
	duk_get_prop_string(ctx, -1, "flows");
	duk_del_prop_string(ctx, -1, (const char *) udata);
	return 0;
}

void
FeExprForgetFlow(const char *cache_key)
{
	if (fe_duk == NULL)
		return;
	(void) fe_protected(fe_forget_flow, (void *) cache_key, NULL);
	duk_set_top(fe_duk, 0);
}

/* ---------------------------------------------------------------------
 * Scopes and evaluation
 * ---------------------------------------------------------------------
 */
/*
 * Scopes nest: an sql step may call a function that advances another run
 * (a trigger calling flow_send, say), so the heap keeps a stack of scopes,
 * each {ctx, event}, and the C side a stack of the matching flow keys.
 */
#define FE_MAX_SCOPES 32
static const char *fe_scope_keys[FE_MAX_SCOPES];
static int	fe_scope_depth = 0;

typedef struct FeScopeArg
{
	const char *json;
	const char *name;
	FeTmpl	   *tmpl;
	int			expr;
	int			failed_expr;
} FeScopeArg;

/* Push stash.scopes[top] (the current scope object). */
static void
fe_push_scope(duk_context *ctx)
{
	duk_push_heap_stash(ctx);
	duk_get_prop_string(ctx, -1, "scopes");
	duk_get_prop_index(ctx, -1, fe_scope_depth - 1);
	duk_remove(ctx, -2);
	duk_remove(ctx, -2);
}

static duk_ret_t
fe_scope_open(duk_context *ctx, void *udata)
{
	FeScopeArg *a = (FeScopeArg *) udata;

	duk_push_heap_stash(ctx);
	duk_get_prop_string(ctx, -1, "scopes");
	duk_push_object(ctx);
	duk_push_string(ctx, a->json);
	duk_json_decode(ctx, -1);
	if (!duk_is_object(ctx, -1) || duk_is_array(ctx, -1))
		return duk_error(ctx, DUK_ERR_TYPE_ERROR, "the context is not a JSON object");
	duk_put_prop_string(ctx, -2, "ctx");
	duk_push_object(ctx);
	duk_put_prop_string(ctx, -2, "event");
	duk_put_prop_index(ctx, -2, fe_scope_depth);
	return 0;
}

/*
 * Open a scope for one run: its context (JSON text) becomes the object
 * that expressions see.  Every successful open must be closed.
 */
bool
FeExprScopeOpen(const char *cache_key, const char *context_json, char **error)
{
	FeScopeArg	a = {0};

	if (fe_scope_depth >= FE_MAX_SCOPES)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("flow runs are nested more than %d deep", FE_MAX_SCOPES),
				 errdetail("An sql step advanced another run, which advanced another, and so on.")));
	a.json = context_json;
	if (!fe_protected(fe_scope_open, &a, error))
		return false;
	duk_set_top(fe_duk, 0);
	fe_scope_keys[fe_scope_depth++] = cache_key;
	return true;
}

static duk_ret_t
fe_scope_event(duk_context *ctx, void *udata)
{
	fe_push_scope(ctx);
	duk_push_string(ctx, (const char *) udata);
	duk_json_decode(ctx, -1);
	duk_put_prop_string(ctx, -2, "event");
	return 0;
}

void
FeExprScopeSetEvent(const char *payload_json)
{
	char	   *err = NULL;

	if (!fe_protected(fe_scope_event, (void *) (payload_json ? payload_json : "{}"), &err))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("could not bind the event payload: %s", err)));
	duk_set_top(fe_duk, 0);
}

/*
 * Call expression `id` of the open scope; leaves its value on the stack.
 * Expects [scope, flow functions] at stack positions 0 and 1.
 */
static void
fe_call_expr(duk_context *ctx, FeScopeArg *a, int id)
{
	a->failed_expr = id;
	duk_get_prop_index(ctx, 1, id);
	if (!duk_is_function(ctx, -1))
		(void) duk_error(ctx, DUK_ERR_REFERENCE_ERROR, "expression was not compiled");
	duk_get_prop_string(ctx, 0, "ctx");
	duk_get_prop_string(ctx, 0, "event");
	duk_call_method(ctx, 1);
	a->failed_expr = -1;
}

static void
fe_scope_prelude(duk_context *ctx)
{
	fe_push_scope(ctx);						/* 0 */
	duk_push_heap_stash(ctx);
	duk_get_prop_string(ctx, -1, "flows");
	duk_get_prop_string(ctx, -1, fe_scope_keys[fe_scope_depth - 1]);
	duk_remove(ctx, -2);
	duk_remove(ctx, -2);					/* 1: this flow's functions */
}

static duk_ret_t
fe_eval_condition(duk_context *ctx, void *udata)
{
	FeScopeArg *a = (FeScopeArg *) udata;

	fe_scope_prelude(ctx);
	fe_call_expr(ctx, a, a->expr);
	duk_push_boolean(ctx, duk_to_boolean(ctx, -1));
	return 1;
}

FeEvalResult
FeExprEvalCondition(int expr)
{
	FeEvalResult r = {0};
	FeScopeArg	a = {0};

	a.expr = expr;
	a.failed_expr = -1;
	r.failed_expr = -1;
	r.ok = fe_protected(fe_eval_condition, &a, &r.error);
	if (r.ok)
	{
		r.truth = duk_get_boolean(fe_duk, -1);
		duk_set_top(fe_duk, 0);
	}
	else
		r.failed_expr = a.failed_expr;
	return r;
}

/* Push the value of template t. */
static void
fe_push_tmpl(duk_context *ctx, FeScopeArg *a, FeTmpl *t)
{
	int			i;

	switch (t->kind)
	{
		case FE_TMPL_LITERAL:
			duk_push_string(ctx, t->json);
			duk_json_decode(ctx, -1);
			break;
		case FE_TMPL_EXPR:
			fe_call_expr(ctx, a, t->expr);
			break;
		case FE_TMPL_STRING:
			for (i = 0; i < t->nparts; i++)
			{
				if (t->texts[i])
				{
					duk_push_string(ctx, t->texts[i]);
					continue;
				}
				fe_call_expr(ctx, a, t->exprs[i]);
				/* null and undefined print as nothing; objects as JSON */
				if (duk_is_null_or_undefined(ctx, -1))
				{
					duk_pop(ctx);
					duk_push_string(ctx, "");
				}
				else if (duk_is_object(ctx, -1) && !duk_is_function(ctx, -1))
					duk_json_encode(ctx, -1);
				else
					duk_to_string(ctx, -1);
			}
			duk_concat(ctx, t->nparts);
			break;
		case FE_TMPL_OBJECT:
			duk_push_object(ctx);
			for (i = 0; i < t->nparts; i++)
			{
				fe_push_tmpl(ctx, a, t->items[i]);
				duk_put_prop_string(ctx, -2, t->keys[i]);
			}
			break;
		case FE_TMPL_ARRAY:
			duk_push_array(ctx);
			for (i = 0; i < t->nparts; i++)
			{
				fe_push_tmpl(ctx, a, t->items[i]);
				duk_put_prop_index(ctx, -2, i);
			}
			break;
	}
}

static duk_ret_t
fe_eval_template(duk_context *ctx, void *udata)
{
	FeScopeArg *a = (FeScopeArg *) udata;

	fe_scope_prelude(ctx);
	fe_push_tmpl(ctx, a, a->tmpl);
	duk_json_encode(ctx, -1);
	return 1;
}

/* Evaluate a template to JSON text. */
FeEvalResult
FeExprEvalTemplate(FeTmpl *t)
{
	FeEvalResult r = {0};
	FeScopeArg	a = {0};

	a.tmpl = t;
	a.failed_expr = -1;
	r.failed_expr = -1;
	r.ok = fe_protected(fe_eval_template, &a, &r.error);
	if (r.ok)
		r.json = fe_take_json();
	else
		r.failed_expr = a.failed_expr;
	return r;
}

static duk_ret_t
fe_assign_json(duk_context *ctx, void *udata)
{
	FeScopeArg *a = (FeScopeArg *) udata;

	fe_push_scope(ctx);
	duk_get_prop_string(ctx, -1, "ctx");
	if (a->json == NULL)
	{
		duk_del_prop_string(ctx, -1, a->name);
		return 0;
	}
	duk_push_string(ctx, a->json);
	duk_json_decode(ctx, -1);
	duk_put_prop_string(ctx, -2, a->name);
	return 0;
}

/* Assign a JSON value (text) to context variable `name`; NULL removes it. */
bool
FeExprAssignJson(const char *name, const char *json, char **error)
{
	FeScopeArg	a = {0};

	a.name = name;
	a.json = json;
	if (!fe_protected(fe_assign_json, &a, error))
		return false;
	duk_set_top(fe_duk, 0);
	return true;
}

static duk_ret_t
fe_scope_context(duk_context *ctx, void *udata)
{
	fe_push_scope(ctx);
	duk_get_prop_string(ctx, -1, "ctx");
	duk_json_encode(ctx, -1);
	return 1;
}

/* The context as JSON text, or NULL with *error set. */
char *
FeExprScopeContext(char **error)
{
	if (!fe_protected(fe_scope_context, NULL, error))
		return NULL;
	return fe_take_json();
}

static duk_ret_t
fe_scope_close(duk_context *ctx, void *udata)
{
	duk_push_heap_stash(ctx);
	duk_get_prop_string(ctx, -1, "scopes");
	duk_set_length(ctx, -1, fe_scope_depth);
	return 0;
}

/*
 * Close the innermost scope, dropping the run's values so nothing of one
 * run stays visible to the next.  Safe to call when none is open.
 */
void
FeExprScopeClose(void)
{
	if (fe_scope_depth == 0 || fe_duk == NULL)
		return;
	fe_scope_depth--;
	(void) fe_protected(fe_scope_close, NULL, NULL);
	duk_set_top(fe_duk, 0);
}

/* ---------------------------------------------------------------------
 * Templates
 * ---------------------------------------------------------------------
 */

/* Find the end of the placeholder whose body starts at p; NULL if none. */
static const char *
fe_placeholder_end(const char *p, bool braces2)
{
	if (braces2)
		return strstr(p, "}}");
	else
	{
		int			depth = 0;
		char		quote = 0;

		for (; *p; p++)
		{
			if (quote)
			{
				if (*p == '\\' && p[1])
					p++;
				else if (*p == quote)
					quote = 0;
			}
			else if (*p == '\'' || *p == '"')
				quote = *p;
			else if (*p == '{')
				depth++;
			else if (*p == '}')
			{
				if (depth == 0)
					return p;
				depth--;
			}
		}
		return NULL;
	}
}

static FeTmpl *
fe_tmpl_literal(char *json)
{
	FeTmpl	   *t = palloc0(sizeof(FeTmpl));

	t->kind = FE_TMPL_LITERAL;
	t->json = json;
	return t;
}

static int
fe_add_expr(List **exprs, char *text)
{
	FeExprSource *s = palloc0(sizeof(FeExprSource));

	s->text = text;
	*exprs = lappend(*exprs, s);
	return list_length(*exprs) - 1;
}

/* Parse one string into a template; *error gets a sentence on failure. */
static FeTmpl *
fe_tmpl_string(const char *s, int len, List **exprs, char **error)
{
	const char *p = s;
	const char *end = s + len;
	List	   *texts = NIL;
	List	   *bodies = NIL;
	FeTmpl	   *t;
	ListCell   *lc1,
			   *lc2;
	int			i;
	char	   *str = pnstrdup(s, len);

	p = str;
	end = str + len;
	while (p < end)
	{
		const char *open2 = strstr(p, "{{");
		const char *open1 = strstr(p, "${");
		const char *open;
		const char *close;
		bool		braces2;

		if (open2 && (!open1 || open2 < open1))
		{
			open = open2;
			braces2 = true;
		}
		else
		{
			open = open1;
			braces2 = false;
		}
		if (open == NULL)
		{
			texts = lappend(texts, pstrdup(p));
			bodies = lappend(bodies, NULL);
			break;
		}
		if (open > p)
		{
			texts = lappend(texts, pnstrdup(p, open - p));
			bodies = lappend(bodies, NULL);
		}
		close = fe_placeholder_end(open + 2, braces2);
		if (close == NULL)
		{
			*error = psprintf("The placeholder at \"%.20s\" is not closed with \"%s\".",
							  open, braces2 ? "}}" : "}");
			return NULL;
		}
		{
			char	   *body = pnstrdup(open + 2, close - open - 2);
			char	   *why;

			/* trim, so messages quote the expression as written */
			while (*body && isspace((unsigned char) *body))
				body++;
			while (*body && isspace((unsigned char) body[strlen(body) - 1]))
				body[strlen(body) - 1] = '\0';
			why = FeExprCompileCheck(body);

			if (why)
			{
				*error = psprintf("Expression \"%s\" is not valid: %s", body, why);
				return NULL;
			}
			texts = lappend(texts, NULL);
			bodies = lappend(bodies, body);
		}
		p = close + (braces2 ? 2 : 1);
	}

	if (list_length(bodies) == 1 && linitial(bodies) != NULL)
	{
		t = palloc0(sizeof(FeTmpl));
		t->kind = FE_TMPL_EXPR;
		t->expr = fe_add_expr(exprs, (char *) linitial(bodies));
		return t;
	}
	i = 0;
	forboth(lc1, texts, lc2, bodies)
	{
		if (lfirst(lc2) != NULL)
			i++;
	}
	if (i == 0)
		return fe_tmpl_literal(FeJsonQuote(str));

	t = palloc0(sizeof(FeTmpl));
	t->kind = FE_TMPL_STRING;
	t->nparts = list_length(texts);
	t->texts = palloc0(sizeof(char *) * t->nparts);
	t->exprs = palloc0(sizeof(int) * t->nparts);
	i = 0;
	forboth(lc1, texts, lc2, bodies)
	{
		t->texts[i] = (char *) lfirst(lc1);
		t->exprs[i] = lfirst(lc2) ? fe_add_expr(exprs, (char *) lfirst(lc2)) : -1;
		i++;
	}
	return t;
}

static FeTmpl *fe_tmpl_container(JsonbContainer *c, List **exprs, char **error);

static FeTmpl *
fe_tmpl_value(JsonbValue *v, List **exprs, char **error)
{
	switch (v->type)
	{
		case jbvString:
			return fe_tmpl_string(v->val.string.val, v->val.string.len, exprs, error);
		case jbvBinary:
			return fe_tmpl_container(v->val.binary.data, exprs, error);
		case jbvNull:
			return fe_tmpl_literal(pstrdup("null"));
		case jbvBool:
			return fe_tmpl_literal(pstrdup(v->val.boolean ? "true" : "false"));
		case jbvNumeric:
			return fe_tmpl_literal(DatumGetCString(DirectFunctionCall1(numeric_out,
																	   NumericGetDatum(v->val.numeric))));
		default:
			*error = pstrdup("The value has an unexpected JSON type.");
			return NULL;
	}
}

static FeTmpl *
fe_tmpl_container(JsonbContainer *c, List **exprs, char **error)
{
	JsonbIterator *it = JsonbIteratorInit(c);
	JsonbValue	v;
	JsonbIteratorToken tok;
	List	   *keys = NIL;
	List	   *items = NIL;
	bool		is_object = false;
	bool		all_literal = true;
	FeTmpl	   *t;
	ListCell   *lc;
	int			i;

	while ((tok = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
	{
		if (tok == WJB_BEGIN_OBJECT)
			is_object = true;
		else if (tok == WJB_KEY)
			keys = lappend(keys, pnstrdup(v.val.string.val, v.val.string.len));
		else if (tok == WJB_VALUE || tok == WJB_ELEM)
		{
			FeTmpl	   *item = fe_tmpl_value(&v, exprs, error);

			if (item == NULL)
				return NULL;
			if (item->kind != FE_TMPL_LITERAL)
				all_literal = false;
			items = lappend(items, item);
		}
	}

	if (all_literal)
	{
		/* a raw scalar container cannot occur below the top level */
		return fe_tmpl_literal(JsonbToCString(NULL, c, VARSIZE_ANY(c)));
	}

	t = palloc0(sizeof(FeTmpl));
	t->kind = is_object ? FE_TMPL_OBJECT : FE_TMPL_ARRAY;
	t->nparts = list_length(items);
	t->items = palloc0(sizeof(FeTmpl *) * t->nparts);
	if (is_object)
		t->keys = palloc0(sizeof(char *) * t->nparts);
	i = 0;
	foreach(lc, items)
	{
		t->items[i] = (FeTmpl *) lfirst(lc);
		if (is_object)
			t->keys[i] = (char *) list_nth(keys, i);
		i++;
	}
	return t;
}

/*
 * Parse a JSON value into a template, appending each placeholder's
 * expression to *exprs.  Returns NULL with *error set on a bad placeholder.
 */
FeTmpl *
FeTmplParse(Jsonb *value, List **exprs, char **error)
{
	JsonbValue	v;

	if (JB_ROOT_IS_SCALAR(value))
	{
		if (!JsonbExtractScalar(&value->root, &v))
			elog(ERROR, "could not extract a scalar from jsonb");
		return fe_tmpl_value(&v, exprs, error);
	}
	return fe_tmpl_container(&value->root, exprs, error);
}
