/*-------------------------------------------------------------------------
 *
 * definition.c
 *	  Parse and validate flow definitions; cache parsed versions per backend.
 *
 * FeDefinitionParse() is the single reader of the definition format: it
 * both builds the FeFlow the engine runs and lists every problem, so
 * flow_validate(), flow_define() and run-time loading can never disagree.
 * It never raises for a bad definition; it reports problems instead.
 *
 * The cache maps (flow, version) to a parsed FeFlow in its own memory
 * context under CacheMemoryContext.  Versions are immutable, but a version
 * number can be reused after DROP EXTENSION, so each entry remembers the
 * xmin of its definition row and is rebuilt when that changes.
 *
 * Transactions and locks: parsing touches no table except through
 * FeCatalogCheckFunction (a catalog lookup in a subtransaction).  Loading
 * reads flow_definitions through catalog.c under the caller's snapshot.
 *
 *-------------------------------------------------------------------------
 */
#include "flow_engine.h"

#include "lib/stringinfo.h"
#include "storage/proc.h"
#include "utils/builtins.h"
#include "utils/hsearch.h"
#include "utils/memutils.h"

typedef struct FeParse
{
	List	   *problems;
	List	   *exprs;
	FeFlow	   *flow;
	List	   *state_names;	/* char *, index = state index */
} FeParse;

static const char *fe_executor_names[] = {
	"set", "respond", "sql", "handoff", "http", "llm", "nlu", "tool", NULL
};

static const char *fe_phase_keys[] = {"onEntry", "actions", "onExit"};

/* ---------------------------------------------------------------------
 * Small helpers
 * ---------------------------------------------------------------------
 */
static void
fe_problem(FeParse *ps, const char *severity, const char *path,
		   const char *fmt,...)
	pg_attribute_printf(4, 5);

static void
fe_problem(FeParse *ps, const char *severity, const char *path,
		   const char *fmt,...)
{
	FeProblem  *p = palloc0(sizeof(FeProblem));
	StringInfoData buf;

	initStringInfo(&buf);
	for (;;)
	{
		va_list		args;
		int			needed;

		va_start(args, fmt);
		needed = appendStringInfoVA(&buf, fmt, args);
		va_end(args);
		if (needed == 0)
			break;
		enlargeStringInfo(&buf, needed);
	}
	p->path = pstrdup(path);
	p->severity = (char *) severity;
	p->message = buf.data;
	ps->problems = lappend(ps->problems, p);
}

/* JSON-path style: $.states.init, or $.states."my state" */
static char *
fe_path(const char *base, const char *key)
{
	const char *k;
	bool		plain = (*key != '\0') && !isdigit((unsigned char) *key);

	for (k = key; *k && plain; k++)
		if (!(isalnum((unsigned char) *k) || *k == '_'))
			plain = false;
	if (plain)
		return psprintf("%s.%s", base, key);
	return psprintf("%s.%s", base, FeJsonQuote(key));
}

static char *
fe_path_index(const char *base, int i)
{
	return psprintf("%s[%d]", base, i);
}

/* Member `key` of object container c, or false if absent. */
static bool
fe_get(JsonbContainer *c, const char *key, JsonbValue *out)
{
	JsonbValue *v;

	if (c == NULL || !JsonContainerIsObject(c))
		return false;
	v = getKeyJsonValueFromContainer(c, key, strlen(key), out);
	return v != NULL;
}

static bool
fe_is_object(JsonbValue *v)
{
	return v->type == jbvBinary && JsonContainerIsObject(v->val.binary.data);
}

static bool
fe_is_array(JsonbValue *v)
{
	return v->type == jbvBinary && JsonContainerIsArray(v->val.binary.data) &&
		!JsonContainerIsScalar(v->val.binary.data);
}

static char *
fe_str(JsonbValue *v)
{
	return pnstrdup(v->val.string.val, v->val.string.len);
}

static const char *
fe_type_name(JsonbValue *v)
{
	switch (v->type)
	{
		case jbvNull:
			return "null";
		case jbvString:
			return "a string";
		case jbvNumeric:
			return "a number";
		case jbvBool:
			return "a boolean";
		case jbvBinary:
			return JsonContainerIsObject(v->val.binary.data) ? "an object" : "an array";
		default:
			return "a value";
	}
}

/* Build a Jsonb from a JsonbValue (binary or scalar). */
static Jsonb *
fe_jsonb(JsonbValue *v)
{
	return JsonbValueToJsonb(v);
}

/* Iterate over the members of an object: keys and values (nested = binary). */
typedef struct FeMember
{
	char	   *key;
	JsonbValue	value;
} FeMember;

static List *
fe_members(JsonbContainer *c)
{
	JsonbIterator *it = JsonbIteratorInit(c);
	JsonbValue	v;
	JsonbIteratorToken tok;
	List	   *out = NIL;
	FeMember   *m = NULL;

	while ((tok = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
	{
		if (tok == WJB_KEY)
		{
			m = palloc0(sizeof(FeMember));
			m->key = fe_str(&v);
		}
		else if (tok == WJB_VALUE || tok == WJB_ELEM)
		{
			if (m == NULL)
				m = palloc0(sizeof(FeMember));
			m->value = v;
			out = lappend(out, m);
			m = NULL;
		}
	}
	return out;
}

static int
fe_state_index(FeParse *ps, const char *name)
{
	ListCell   *lc;
	int			i = 0;

	foreach(lc, ps->state_names)
	{
		if (strcmp((char *) lfirst(lc), name) == 0)
			return i;
		i++;
	}
	return -1;
}

static bool
fe_name_ok(FeParse *ps, const char *path, const char *what, JsonbValue *v)
{
	if (v->type != jbvString)
	{
		fe_problem(ps, "error", path, "%s must be a string, not %s.", what, fe_type_name(v));
		return false;
	}
	if (v->val.string.len == 0 || v->val.string.len > FE_MAX_NAME)
	{
		fe_problem(ps, "error", path, "%s must be 1 to %d bytes long.", what, FE_MAX_NAME);
		return false;
	}
	return true;
}

/* ---------------------------------------------------------------------
 * Actions
 * ---------------------------------------------------------------------
 */
static FeTmpl *
fe_template(FeParse *ps, const char *path, JsonbValue *v)
{
	char	   *err = NULL;
	FeTmpl	   *t = FeTmplParse(fe_jsonb(v), &ps->exprs, &err);

	if (t == NULL)
		fe_problem(ps, "error", path, "%s", err);
	return t;
}

static void
fe_require_key(FeParse *ps, const char *path, const char *executor,
			   JsonbContainer *config, const char *key, JsonbValue *out)
{
	if (!fe_get(config, key, out))
	{
		fe_problem(ps, "error", path, "Executor \"%s\" requires config key \"%s\".",
				   executor, key);
		out->type = jbvNull;
	}
}

/* An integral JSON number, into *out. */
static bool
fe_int(JsonbValue *v, int64 *out)
{
	char	   *txt;
	char	   *end;

	if (v->type != jbvNumeric)
		return false;
	txt = DatumGetCString(DirectFunctionCall1(numeric_out, NumericGetDatum(v->val.numeric)));
	errno = 0;
	*out = strtoll(txt, &end, 10);
	return errno == 0 && *end == '\0' && end != txt;
}

/* A string with a {{ }} or ${ } placeholder: its type is known only at run time. */
static bool
fe_is_placeholder(JsonbValue *v)
{
	char	   *s;

	if (v->type != jbvString)
		return false;
	s = fe_str(v);
	return strstr(s, "{{") != NULL || strstr(s, "${") != NULL;
}

static void
fe_check_int(FeParse *ps, const char *path, JsonbContainer *c, const char *key,
			 int min)
{
	JsonbValue	v;
	int64		n;

	if (!fe_get(c, key, &v) || fe_is_placeholder(&v))
		return;
	if (!fe_int(&v, &n) || n < min || n > PG_INT32_MAX)
		fe_problem(ps, "error", fe_path(path, key), "\"%s\" must be an integer of at least %d.",
				   key, min);
}

static void
fe_parse_executor_config(FeParse *ps, FeAction *a, const char *path,
						 JsonbValue *config)
{
	JsonbContainer *c = fe_is_object(config) ? config->val.binary.data : NULL;
	JsonbValue	v;
	char	   *cpath = fe_path(path, "config");

	if (config->type != jbvNull && c == NULL)
	{
		fe_problem(ps, "error", cpath, "The config must be an object, not %s.",
				   fe_type_name(config));
		return;
	}

	switch (a->executor)
	{
		case FE_EXEC_SET:
			{
				List	   *members;
				ListCell   *lc;
				int			i = 0;

				if (c == NULL || JsonContainerSize(c) == 0)
				{
					fe_problem(ps, "error", cpath,
							   "Executor \"set\" requires a config object of variable names and values.");
					return;
				}
				members = fe_members(c);
				a->nset = list_length(members);
				a->set_names = palloc0(sizeof(char *) * a->nset);
				a->set_values = palloc0(sizeof(FeTmpl *) * a->nset);
				foreach(lc, members)
				{
					FeMember   *m = (FeMember *) lfirst(lc);

					a->set_names[i] = m->key;
					a->set_values[i] = fe_template(ps, fe_path(cpath, m->key), &m->value);
					i++;
				}
				return;
			}
		case FE_EXEC_RESPOND:
			fe_require_key(ps, cpath, "respond", c, "text", &v);
			if (v.type == jbvNull)
				return;
			if (v.type != jbvString)
			{
				fe_problem(ps, "error", fe_path(cpath, "text"),
						   "\"text\" must be a string, not %s.", fe_type_name(&v));
				return;
			}
			a->respond_text = fe_template(ps, fe_path(cpath, "text"), &v);
			return;
		case FE_EXEC_SQL:
			fe_require_key(ps, cpath, "sql", c, "function", &v);
			if (v.type == jbvString)
			{
				char	   *why = NULL;
				int			rc;

				a->sql_function = fe_str(&v);
				rc = FeCatalogCheckFunction(a->sql_function, &why);
				if (rc != FE_FUNCTION_OK)
					fe_problem(ps, rc == FE_FUNCTION_MISSING ? "warning" : "error",
							   fe_path(cpath, "function"), "%s", why);
			}
			else if (v.type != jbvNull)
				fe_problem(ps, "error", fe_path(cpath, "function"),
						   "\"function\" must be a string such as \"public.price(jsonb)\", not %s.",
						   fe_type_name(&v));
			if (fe_get(c, "args", &v))
				a->sql_args = fe_template(ps, fe_path(cpath, "args"), &v);
			return;
		case FE_EXEC_HTTP:
			fe_require_key(ps, cpath, "http", c, "url", &v);
			if (v.type != jbvNull && v.type != jbvString)
				fe_problem(ps, "error", fe_path(cpath, "url"), "\"url\" must be a string.");
			if (fe_get(c, "method", &v) && !fe_is_placeholder(&v))
			{
				static const char *methods[] = {"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", NULL};
				bool		ok = false;
				int			i;

				for (i = 0; v.type == jbvString && methods[i]; i++)
					if (strlen(methods[i]) == (size_t) v.val.string.len &&
						strncmp(methods[i], v.val.string.val, v.val.string.len) == 0)
						ok = true;
				if (!ok)
					fe_problem(ps, "error", fe_path(cpath, "method"),
							   "\"method\" must be one of GET, POST, PUT, PATCH, DELETE or HEAD.");
			}
			if (fe_get(c, "headers", &v) && !fe_is_object(&v) && !fe_is_placeholder(&v))
				fe_problem(ps, "error", fe_path(cpath, "headers"), "\"headers\" must be an object.");
			fe_check_int(ps, cpath, c, "timeout_ms", 1);
			if (fe_get(c, "retry", &v) && !fe_is_placeholder(&v))
			{
				if (!fe_is_object(&v))
					fe_problem(ps, "error", fe_path(cpath, "retry"), "\"retry\" must be an object.");
				else
				{
					fe_check_int(ps, fe_path(cpath, "retry"), v.val.binary.data, "max_attempts", 1);
					fe_check_int(ps, fe_path(cpath, "retry"), v.val.binary.data, "backoff_ms", 0);
				}
			}
			break;
		case FE_EXEC_LLM:
			if (!fe_get(c, "prompt", &v) && !fe_get(c, "messages", &v))
				fe_problem(ps, "error", cpath,
						   "Executor \"llm\" requires config key \"prompt\" or \"messages\".");
			if (fe_get(c, "messages", &v) && !fe_is_array(&v))
				fe_problem(ps, "error", fe_path(cpath, "messages"), "\"messages\" must be an array.");
			fe_check_int(ps, cpath, c, "max_tokens", 1);
			fe_check_int(ps, cpath, c, "timeout_ms", 1);
			if (fe_get(c, "temperature", &v) && v.type != jbvNumeric && !fe_is_placeholder(&v))
				fe_problem(ps, "error", fe_path(cpath, "temperature"), "\"temperature\" must be a number.");
			if (fe_get(c, "schema", &v) && !fe_is_object(&v))
				fe_problem(ps, "error", fe_path(cpath, "schema"), "\"schema\" must be a JSON Schema object.");
			if (fe_get(c, "response_format", &v) && !fe_is_object(&v))
				fe_problem(ps, "error", fe_path(cpath, "response_format"),
						   "\"response_format\" must be an object such as {\"type\": \"json_object\"}.");
			if (fe_get(c, "providers", &v) && !fe_is_array(&v))
				fe_problem(ps, "error", fe_path(cpath, "providers"),
						   "\"providers\" must be an array of provider names.");
			break;
		case FE_EXEC_NLU:
			fe_require_key(ps, cpath, "nlu", c, "text", &v);
			fe_check_int(ps, cpath, c, "timeout_ms", 1);
			if (fe_get(c, "threshold", &v) && v.type != jbvNumeric && !fe_is_placeholder(&v))
				fe_problem(ps, "error", fe_path(cpath, "threshold"),
						   "\"threshold\" must be a number between 0 and 1.");
			if (fe_get(c, "intents", &v) && !fe_is_array(&v) && !fe_is_placeholder(&v))
				fe_problem(ps, "error", fe_path(cpath, "intents"), "\"intents\" must be an array.");
			break;
		case FE_EXEC_TOOL:
			fe_require_key(ps, cpath, "tool", c, "name", &v);
			if (v.type != jbvNull && v.type != jbvString)
				fe_problem(ps, "error", fe_path(cpath, "name"), "\"name\" must be a string.");
			break;
		case FE_EXEC_HANDOFF:
			break;
	}
	/* handoff and asynchronous executors: the whole config is evaluated when run */
	if (config->type != jbvNull)
		a->config = fe_template(ps, cpath, config);
}

static void
fe_parse_actions(FeParse *ps, FeState *st, FePhase phase, const char *spath,
				 JsonbContainer *sc)
{
	JsonbValue	v;
	char	   *path = fe_path(spath, fe_phase_keys[phase]);
	List	   *items;
	ListCell   *lc;
	int			i = 0;

	if (!fe_get(sc, fe_phase_keys[phase], &v))
		return;
	if (!fe_is_array(&v))
	{
		fe_problem(ps, "error", path, "\"%s\" must be an array of actions, not %s.",
				   fe_phase_keys[phase], fe_type_name(&v));
		return;
	}
	items = fe_members(v.val.binary.data);
	st->nactions[phase] = list_length(items);
	st->actions[phase] = palloc0(sizeof(FeAction) * (list_length(items) + 1));
	foreach(lc, items)
	{
		FeMember   *m = (FeMember *) lfirst(lc);
		FeAction   *a = &st->actions[phase][i];
		char	   *apath = fe_path_index(path, i);
		JsonbContainer *ac;
		JsonbValue	ev,
					cv;
		int			e;

		i++;
		if (!fe_is_object(&m->value))
		{
			fe_problem(ps, "error", apath, "An action must be an object, not %s.",
					   fe_type_name(&m->value));
			continue;
		}
		ac = m->value.val.binary.data;
		if (!fe_get(ac, "executor", &ev) || ev.type != jbvString)
		{
			fe_problem(ps, "error", fe_path(apath, "executor"),
					   "An action requires \"executor\", a string.");
			continue;
		}
		a->executor_name = fe_str(&ev);
		for (e = 0; fe_executor_names[e]; e++)
			if (strcmp(fe_executor_names[e], a->executor_name) == 0)
				break;
		if (fe_executor_names[e] == NULL)
		{
			fe_problem(ps, "error", fe_path(apath, "executor"),
					   "Executor \"%s\" is unknown; the executors are set, respond, sql, handoff, http, llm, nlu and tool.",
					   a->executor_name);
			continue;
		}
		a->executor = (FeExecutor) e;
		if (fe_get(ac, "output", &ev))
		{
			if (fe_name_ok(ps, fe_path(apath, "output"), "\"output\"", &ev))
				a->output = fe_str(&ev);
		}
		if (!fe_get(ac, "config", &cv))
			cv.type = jbvNull;
		fe_parse_executor_config(ps, a, apath, &cv);
	}
}

/* ---------------------------------------------------------------------
 * Elicitation: ask, check the answer, store it, re-ask
 * ---------------------------------------------------------------------
 */

/* The answer, as a JavaScript expression over the user_message payload. */
#define FE_ELICIT_ANSWER \
	"(event.text === undefined || event.text === null ? '' : String(event.text).trim())"

/* `pattern` as a JavaScript regular expression literal. */
static char *
fe_regex_literal(const char *pattern, const char *flags)
{
	StringInfoData b;
	const char *p;

	initStringInfo(&b);
	appendStringInfoChar(&b, '/');
	for (p = pattern; *p; p++)
	{
		if (*p == '\\' && p[1])
		{
			appendStringInfoChar(&b, *p++);
			appendStringInfoChar(&b, *p);
		}
		else if (*p == '/')
			appendStringInfoString(&b, "\\/");
		else if (*p == '\n')
			appendStringInfoString(&b, "\\n");
		else if (*p == '\r')
			appendStringInfoString(&b, "\\r");
		else
			appendStringInfoChar(&b, *p);
	}
	appendStringInfo(&b, "/%s", flags);
	return b.data;
}

static FeTmpl *
fe_template_text(FeParse *ps, const char *path, const char *text)
{
	JsonbValue	v;

	v.type = jbvString;
	v.val.string.val = (char *) text;
	v.val.string.len = strlen(text);
	return fe_template(ps, path, &v);
}

static void
fe_parse_elicit(FeParse *ps, FeState *st, const char *spath, JsonbValue *ev)
{
	char	   *path = fe_path(spath, "elicit");
	JsonbContainer *c;
	JsonbValue	v;
	FeElicit   *el;
	char	   *validate = "true";
	char	   *pattern = NULL;
	char	   *flags = "";
	char	   *check;
	char	   *why;
	FeExprSource *src;
	FeAction   *ask;
	int			n;

	if (!fe_is_object(ev))
	{
		fe_problem(ps, "error", path, "\"elicit\" must be an object, not %s.", fe_type_name(ev));
		return;
	}
	c = ev->val.binary.data;
	el = palloc0(sizeof(FeElicit));
	el->max_attempts = 3;
	el->check = -1;
	if (!fe_get(c, "variable", &v) || !fe_name_ok(ps, fe_path(path, "variable"), "\"variable\"", &v))
	{
		if (!fe_get(c, "variable", &v))
			fe_problem(ps, "error", fe_path(path, "variable"),
					   "\"elicit\" requires \"variable\", the context variable that receives the answer.");
		return;
	}
	el->variable = fe_str(&v);
	if (!fe_get(c, "prompt", &v) || v.type != jbvString)
	{
		fe_problem(ps, "error", fe_path(path, "prompt"),
				   "\"elicit\" requires \"prompt\", the question as a string.");
		return;
	}
	el->prompt = fe_template(ps, fe_path(path, "prompt"), &v);
	el->retry_prompt = el->prompt;
	if (fe_get(c, "retryPrompt", &v))
	{
		if (v.type != jbvString)
			fe_problem(ps, "error", fe_path(path, "retryPrompt"), "\"retryPrompt\" must be a string.");
		else
			el->retry_prompt = fe_template(ps, fe_path(path, "retryPrompt"), &v);
	}
	if (fe_get(c, "maxAttempts", &v))
	{
		int64		m;

		if (!fe_int(&v, &m) || m < 1 || m > 100)
			fe_problem(ps, "error", fe_path(path, "maxAttempts"),
					   "\"maxAttempts\" must be an integer from 1 to 100.");
		else
			el->max_attempts = (int) m;
	}
	if (fe_get(c, "validate", &v))
	{
		if (v.type != jbvString)
		{
			fe_problem(ps, "error", fe_path(path, "validate"),
					   "\"validate\" must be a JavaScript expression, as a string.");
			return;
		}
		validate = fe_str(&v);
		why = FeExprCheckSyntax(validate);
		if (why)
		{
			fe_problem(ps, "error", fe_path(path, "validate"),
					   "Expression \"%s\" is not valid: %s", validate, why);
			return;
		}
	}
	if (fe_get(c, "flags", &v))
	{
		if (v.type != jbvString || strspn(fe_str(&v), "im") != strlen(fe_str(&v)))
			fe_problem(ps, "error", fe_path(path, "flags"),
					   "\"flags\" may hold only the regular expression flags i and m.");
		else
			flags = fe_str(&v);
	}
	if (fe_get(c, "pattern", &v))
	{
		if (v.type != jbvString || v.val.string.len == 0)
		{
			fe_problem(ps, "error", fe_path(path, "pattern"),
					   "\"pattern\" must be a non-empty regular expression, as a string.");
			return;
		}
		pattern = fe_regex_literal(fe_str(&v), flags);
	}

	/* the check, as one expression around the screened user text */
	check = psprintf("(function (value) { return Boolean(%s\n)%s%s%s; })(" FE_ELICIT_ANSWER ")",
					 validate, pattern ? " && " : "", pattern ? pattern : "",
					 pattern ? ".test(value)" : "");
	why = FeExprCompileOnly(check);
	if (why)
	{
		fe_problem(ps, "error", fe_path(path, pattern ? "pattern" : "validate"),
				   "The %s of state \"%s\" does not compile: %s",
				   pattern ? "pattern" : "validate expression", st->name, why);
		return;
	}
	src = palloc0(sizeof(FeExprSource));
	src->text = check;
	ps->exprs = lappend(ps->exprs, src);
	el->check = list_length(ps->exprs) - 1;
	el->answer = fe_template_text(ps, path, "{{ " FE_ELICIT_ANSWER " }}");
	el->attempts = fe_template_text(ps, path,
									psprintf("{{ (typeof _elicit === 'object' && _elicit !== null && "
											 "_elicit.state === %s) ? _elicit.attempts : 0 }}",
											 FeJsonQuote(st->name)));

	if (FeStateTransition(st, "answered") == NULL)
		fe_problem(ps, "error", fe_path(spath, "transitions"),
				   "State \"%s\" elicits \"%s\" but has no \"answered\" transition.",
				   st->name, el->variable);
	if (FeStateTransition(st, "exhausted") == NULL)
		fe_problem(ps, "warning", fe_path(spath, "transitions"),
				   "State \"%s\" has no \"exhausted\" transition, so %d invalid answers route to \"error\" or fail the run.",
				   st->name, el->max_attempts);
	if (FeStateTransition(st, "always") != NULL || st->nconditions > 0)
		fe_problem(ps, "warning", path,
				   "State \"%s\" elicits a value but has conditions or an \"always\" transition, which may leave it before the answer.",
				   st->name);

	/* the question is the state's last action: a respond */
	n = st->nactions[FE_PHASE_ACTIONS];
	ask = palloc0(sizeof(FeAction) * (n + 2));
	if (n > 0)
		memcpy(ask, st->actions[FE_PHASE_ACTIONS], sizeof(FeAction) * n);
	ask[n].executor = FE_EXEC_RESPOND;
	ask[n].executor_name = "respond";
	ask[n].respond_text = el->prompt;
	st->actions[FE_PHASE_ACTIONS] = ask;
	st->nactions[FE_PHASE_ACTIONS] = n + 1;
	st->elicit = el;
}

/* ---------------------------------------------------------------------
 * States
 * ---------------------------------------------------------------------
 */
static void
fe_parse_state(FeParse *ps, FeState *st, const char *spath, JsonbValue *sv)
{
	JsonbContainer *sc;
	JsonbValue	v;
	List	   *members;
	ListCell   *lc;
	int			i;
	static const char *known[] = {
		"type", "actions", "onEntry", "onExit", "conditions", "timeout",
		"transitions", "elicit", "description", "name", "metadata", NULL
	};

	if (!fe_is_object(sv))
	{
		fe_problem(ps, "error", spath, "State \"%s\" must be an object, not %s.",
				   st->name, fe_type_name(sv));
		return;
	}
	sc = sv->val.binary.data;

	foreach(lc, fe_members(sc))
	{
		FeMember   *m = (FeMember *) lfirst(lc);

		for (i = 0; known[i]; i++)
			if (strcmp(known[i], m->key) == 0)
				break;
		if (known[i] == NULL)
			fe_problem(ps, "warning", fe_path(spath, m->key),
					   "Key \"%s\" of state \"%s\" is not part of the format and is ignored.",
					   m->key, st->name);
	}

	st->type = "action";
	if (fe_get(sc, "type", &v))
	{
		if (v.type == jbvString &&
			(strcmp(fe_str(&v), "action") == 0 || strcmp(fe_str(&v), "decision") == 0 ||
			 strcmp(fe_str(&v), "wait") == 0))
			st->type = fe_str(&v);
		else
			fe_problem(ps, "error", fe_path(spath, "type"),
					   "State type must be \"action\", \"decision\" or \"wait\".");
	}

	fe_parse_actions(ps, st, FE_PHASE_ENTRY, spath, sc);
	fe_parse_actions(ps, st, FE_PHASE_ACTIONS, spath, sc);
	fe_parse_actions(ps, st, FE_PHASE_EXIT, spath, sc);

	if (fe_get(sc, "timeout", &v))
	{
		int64		ms;

		if (!fe_int(&v, &ms) || ms <= 0 || ms > PG_INT32_MAX)
			fe_problem(ps, "error", fe_path(spath, "timeout"),
					   "\"timeout\" must be a positive integer number of milliseconds.");
		else
			st->timeout_ms = (int) ms;
	}

	/* transitions first: conditions refer to them */
	if (fe_get(sc, "transitions", &v))
	{
		char	   *tpath = fe_path(spath, "transitions");

		if (!fe_is_object(&v))
			fe_problem(ps, "error", tpath, "\"transitions\" must be an object of event to state.");
		else
		{
			members = fe_members(v.val.binary.data);
			st->declares_transitions = members != NIL;
			st->transitions = palloc0(sizeof(FeTransition) * (list_length(members) + 1));
			foreach(lc, members)
			{
				FeMember   *m = (FeMember *) lfirst(lc);
				char	   *epath = fe_path(tpath, m->key);
				FeTransition *t = &st->transitions[st->ntransitions];

				if (strlen(m->key) == 0 || strlen(m->key) > FE_MAX_NAME)
				{
					fe_problem(ps, "error", epath, "Event names must be 1 to %d bytes long.", FE_MAX_NAME);
					continue;
				}
				if (m->value.type != jbvString)
				{
					fe_problem(ps, "error", epath,
							   "Transition \"%s\" must name a state, not %s.", m->key,
							   fe_type_name(&m->value));
					continue;
				}
				t->event = m->key;
				t->target = fe_state_index(ps, fe_str(&m->value));
				if (t->target < 0)
				{
					fe_problem(ps, "error", epath,
							   "Transition \"%s\" of state \"%s\" leads to unknown state \"%s\".",
							   m->key, st->name, fe_str(&m->value));
					continue;
				}
				st->ntransitions++;
			}
		}
	}

	if (fe_get(sc, "conditions", &v))
	{
		char	   *cpath = fe_path(spath, "conditions");

		if (!fe_is_array(&v))
			fe_problem(ps, "error", cpath, "\"conditions\" must be an array.");
		else
		{
			members = fe_members(v.val.binary.data);
			st->conditions = palloc0(sizeof(FeCondition) * (list_length(members) + 1));
			i = 0;
			foreach(lc, members)
			{
				FeMember   *m = (FeMember *) lfirst(lc);
				char	   *ipath = fe_path_index(cpath, i++);
				JsonbContainer *cc;
				JsonbValue	ex,
							evv;
				FeCondition *c = &st->conditions[st->nconditions];
				char	   *why;
				FeExprSource *src;

				if (!fe_is_object(&m->value))
				{
					fe_problem(ps, "error", ipath, "A condition must be an object with \"expression\" and \"event\".");
					continue;
				}
				cc = m->value.val.binary.data;
				if (!fe_get(cc, "expression", &ex) || ex.type != jbvString)
				{
					fe_problem(ps, "error", fe_path(ipath, "expression"),
							   "A condition requires \"expression\", a string.");
					continue;
				}
				if (!fe_get(cc, "event", &evv) ||
					!fe_name_ok(ps, fe_path(ipath, "event"), "\"event\"", &evv))
				{
					if (!fe_get(cc, "event", &evv))
						fe_problem(ps, "error", fe_path(ipath, "event"),
								   "A condition requires \"event\", a string.");
					continue;
				}
				why = FeExprCompileCheck(fe_str(&ex));
				if (why)
				{
					fe_problem(ps, "error", fe_path(ipath, "expression"),
							   "Expression \"%s\" is not valid: %s", fe_str(&ex), why);
					continue;
				}
				c->event = fe_str(&evv);
				if (FeStateTransition(st, c->event) == NULL)
					fe_problem(ps, "error", fe_path(ipath, "event"),
							   "Condition event \"%s\" has no transition in state \"%s\".",
							   c->event, st->name);
				src = palloc0(sizeof(FeExprSource));
				src->text = fe_str(&ex);
				ps->exprs = lappend(ps->exprs, src);
				c->expr = list_length(ps->exprs) - 1;
				st->nconditions++;
			}
		}
	}

	if (fe_get(sc, "elicit", &v))
		fe_parse_elicit(ps, st, spath, &v);
}

/* ---------------------------------------------------------------------
 * The whole definition
 * ---------------------------------------------------------------------
 */
FeFlow *
FeDefinitionParse(Jsonb *def, List **problems)
{
	FeParse		ps = {0};
	FeFlow	   *flow = palloc0(sizeof(FeFlow));
	JsonbContainer *root = &def->root;
	JsonbValue	v,
				states;
	List	   *members;
	ListCell   *lc;
	int			i;
	static const char *known[] = {
		"id", "name", "description", "initialState", "finalStates", "states",
		"context", "module", "trigger", "version", "metadata", NULL
	};

	ps.flow = flow;
	flow->initial = -1;

	if (JB_ROOT_IS_SCALAR(def) || !JB_ROOT_IS_OBJECT(def))
	{
		fe_problem(&ps, "error", "$", "A flow definition must be a JSON object.");
		*problems = ps.problems;
		return NULL;
	}

	foreach(lc, fe_members(root))
	{
		FeMember   *m = (FeMember *) lfirst(lc);

		for (i = 0; known[i]; i++)
			if (strcmp(known[i], m->key) == 0)
				break;
		if (known[i] == NULL)
			fe_problem(&ps, "warning", fe_path("$", m->key),
					   "Key \"%s\" is not part of the format and is ignored.", m->key);
	}

	if (!fe_get(root, "id", &v))
		fe_problem(&ps, "error", "$.id", "The definition requires \"id\", the flow's name.");
	else if (fe_name_ok(&ps, "$.id", "\"id\"", &v))
		flow->name = fe_str(&v);

	if (fe_get(root, "name", &v) && v.type != jbvString)
		fe_problem(&ps, "error", "$.name", "\"name\" must be a string.");
	if (fe_get(root, "description", &v) && v.type != jbvString)
		fe_problem(&ps, "error", "$.description", "\"description\" must be a string.");
	if (fe_get(root, "context", &v) && !fe_is_object(&v))
		fe_problem(&ps, "error", "$.context", "\"context\" must be an object describing variables.");

	/* states: names first, so transitions can refer forward */
	if (!fe_get(root, "states", &states))
		fe_problem(&ps, "error", "$.states", "The definition requires \"states\", an object.");
	else if (!fe_is_object(&states) || JsonContainerSize(states.val.binary.data) == 0)
		fe_problem(&ps, "error", "$.states", "\"states\" must be a non-empty object.");
	else
	{
		members = fe_members(states.val.binary.data);
		flow->nstates = list_length(members);
		flow->states = palloc0(sizeof(FeState) * flow->nstates);
		foreach(lc, members)
			ps.state_names = lappend(ps.state_names, ((FeMember *) lfirst(lc))->key);
		i = 0;
		foreach(lc, members)
		{
			FeMember   *m = (FeMember *) lfirst(lc);

			flow->states[i].name = m->key;
			if (strlen(m->key) > FE_MAX_NAME)
				fe_problem(&ps, "error", fe_path("$.states", m->key),
						   "State names must be at most %d bytes long.", FE_MAX_NAME);
			i++;
		}
		i = 0;
		foreach(lc, members)
		{
			FeMember   *m = (FeMember *) lfirst(lc);

			fe_parse_state(&ps, &flow->states[i], fe_path("$.states", m->key), &m->value);
			i++;
		}
	}

	if (!fe_get(root, "initialState", &v))
		fe_problem(&ps, "error", "$.initialState", "The definition requires \"initialState\".");
	else if (v.type != jbvString)
		fe_problem(&ps, "error", "$.initialState", "\"initialState\" must be a string.");
	else if (flow->nstates > 0)
	{
		flow->initial = fe_state_index(&ps, fe_str(&v));
		if (flow->initial < 0)
			fe_problem(&ps, "error", "$.initialState",
					   "Initial state \"%s\" is not a state of the flow.", fe_str(&v));
	}

	if (!fe_get(root, "finalStates", &v))
		fe_problem(&ps, "error", "$.finalStates",
				   "The definition requires \"finalStates\", an array of state names.");
	else if (!fe_is_array(&v))
		fe_problem(&ps, "error", "$.finalStates", "\"finalStates\" must be an array of state names.");
	else
	{
		i = 0;
		foreach(lc, fe_members(v.val.binary.data))
		{
			FeMember   *m = (FeMember *) lfirst(lc);
			char	   *fpath = fe_path_index("$.finalStates", i++);
			int			s;

			if (m->value.type != jbvString)
			{
				fe_problem(&ps, "error", fpath, "A final state must be a state name.");
				continue;
			}
			s = fe_state_index(&ps, fe_str(&m->value));
			if (s < 0)
				fe_problem(&ps, "error", fpath, "Final state \"%s\" is not a state of the flow.",
						   fe_str(&m->value));
			else
				flow->states[s].final = true;
		}
	}

	/* graph checks: reachability and ways out */
	if (flow->nstates > 0 && flow->initial >= 0)
	{
		bool	   *seen = palloc0(sizeof(bool) * flow->nstates);
		int		   *queue = palloc(sizeof(int) * flow->nstates);
		int			head = 0,
					tail = 0;

		seen[flow->initial] = true;
		queue[tail++] = flow->initial;
		while (head < tail)
		{
			FeState    *st = &flow->states[queue[head++]];
			int			t;

			if (st->final)
				continue;
			for (t = 0; t < st->ntransitions; t++)
			{
				int			target = st->transitions[t].target;

				if (!seen[target])
				{
					seen[target] = true;
					queue[tail++] = target;
				}
			}
		}
		for (i = 0; i < flow->nstates; i++)
		{
			FeState    *st = &flow->states[i];
			char	   *spath = fe_path("$.states", st->name);

			if (!seen[i])
				fe_problem(&ps, "warning", spath,
						   "State \"%s\" cannot be reached from the initial state.", st->name);
			if (st->final && st->ntransitions > 0)
				fe_problem(&ps, "warning", fe_path(spath, "transitions"),
						   "State \"%s\" is final, so its transitions are never taken.", st->name);
			if (!st->final && st->ntransitions == 0 && !st->declares_transitions)
				fe_problem(&ps, "error", spath,
						   "State \"%s\" is not final and has no transitions, so a run that enters it can never leave.",
						   st->name);
			if (st->timeout_ms > 0 && FeStateTransition(st, "timeout") == NULL)
				fe_problem(&ps, "warning", fe_path(spath, "timeout"),
						   "State \"%s\" has a timeout but no \"timeout\" transition, so the timeout fails the run.",
						   st->name);
			if (strcmp(st->type, "decision") == 0 && st->nconditions == 0 &&
				FeStateTransition(st, "always") == NULL)
				fe_problem(&ps, "warning", spath,
						   "Decision state \"%s\" has no conditions and no \"always\" transition, so it only waits.",
						   st->name);
		}
	}

	flow->exprs = ps.exprs;
	*problems = ps.problems;
	return flow;
}

bool
FeProblemsHaveErrors(List *problems)
{
	ListCell   *lc;

	foreach(lc, problems)
		if (strcmp(((FeProblem *) lfirst(lc))->severity, "error") == 0)
			return true;
	return false;
}

int
FeFlowStateIndex(FeFlow *flow, const char *name)
{
	int			i;

	for (i = 0; i < flow->nstates; i++)
		if (strcmp(flow->states[i].name, name) == 0)
			return i;
	return -1;
}

FeTransition *
FeStateTransition(FeState *st, const char *event)
{
	int			i;

	for (i = 0; i < st->ntransitions; i++)
		if (strcmp(st->transitions[i].event, event) == 0)
			return &st->transitions[i];
	return NULL;
}

/* "a, b, c": the events a waiting run in this state accepts from outside. */
char *
FeStateAcceptedEvents(FeState *st)
{
	StringInfoData buf;
	int			i;

	initStringInfo(&buf);
	for (i = 0; i < st->ntransitions; i++)
	{
		if (strcmp(st->transitions[i].event, "always") == 0)
			continue;
		appendStringInfo(&buf, "%s%s", buf.len ? ", " : "", st->transitions[i].event);
	}
	return buf.data;
}

/* ---------------------------------------------------------------------
 * The per-backend cache
 * ---------------------------------------------------------------------
 */
typedef struct FeCacheKey
{
	char		name[FE_MAX_NAME + 1];
	int32		version;
} FeCacheKey;

typedef struct FeCacheEntry
{
	FeCacheKey	key;
	FeFlow	   *flow;
	LocalTransactionId checked;	/* transaction that last checked the xmin */
} FeCacheEntry;

static HTAB *fe_cache = NULL;

/*
 * The parsed flow `name` at `version` (or its latest version), compiled
 * and ready to run.  Raises an error naming the flow if there is none.
 */
FeFlow *
FeFlowLoad(const char *name, int version, bool latest)
{
	FeCacheKey	key;
	FeCacheEntry *entry;
	bool		found;
	int			found_version;
	uint64		xmin;
	Jsonb	   *def = NULL;
	MemoryContext mcxt,
				old;
	List	   *problems = NIL;
	FeFlow	   *flow;

	/*
	 * Versions are immutable, so an exact version checked once in this
	 * transaction needs no second look (the worker records many results of
	 * one flow per transaction).
	 */
	if (!latest && fe_cache && strlen(name) <= FE_MAX_NAME)
	{
		memset(&key, 0, sizeof(key));
		strlcpy(key.name, name, sizeof(key.name));
		key.version = version;
		entry = hash_search(fe_cache, &key, HASH_FIND, NULL);
		if (entry && entry->flow && entry->checked == MyProc->lxid)
			return entry->flow;
	}

	if (strlen(name) > FE_MAX_NAME ||
		!FeCatalogFetchDefinition(name, version, latest, &found_version, &xmin, NULL))
	{
		if (latest)
			ereport(ERROR,
					(errcode(ERRCODE_UNDEFINED_OBJECT),
					 errmsg("flow \"%s\" does not exist", name),
					 errhint("Define it with flow_define(); flow_list() shows the defined flows.")));
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("version %d of flow \"%s\" does not exist", version, name)));
	}

	if (fe_cache == NULL)
	{
		HASHCTL		ctl = {0};

		ctl.keysize = sizeof(FeCacheKey);
		ctl.entrysize = sizeof(FeCacheEntry);
		ctl.hcxt = CacheMemoryContext;
		fe_cache = hash_create("flow_engine definitions", 64, &ctl,
							   HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	}
	memset(&key, 0, sizeof(key));
	strlcpy(key.name, name, sizeof(key.name));
	key.version = found_version;
	entry = hash_search(fe_cache, &key, HASH_ENTER, &found);
	if (found && entry->flow != NULL && entry->flow->xmin == xmin)
	{
		entry->checked = MyProc->lxid;
		return entry->flow;
	}
	if (found && entry->flow != NULL)
	{
		FeExprForgetFlow(entry->flow->cache_key);
		MemoryContextDelete(entry->flow->mcxt);
	}
	entry->flow = NULL;

	(void) FeCatalogFetchDefinition(name, found_version, false, &found_version, &xmin, &def);

	mcxt = AllocSetContextCreate(CacheMemoryContext, "flow_engine flow",
								 ALLOCSET_SMALL_SIZES);
	MemoryContextCopyAndSetIdentifier(mcxt, name);
	old = MemoryContextSwitchTo(mcxt);
	flow = FeDefinitionParse(def, &problems);
	MemoryContextSwitchTo(old);
	if (flow == NULL || FeProblemsHaveErrors(problems))
	{
		MemoryContextDelete(mcxt);
		ereport(ERROR,
				(errcode(ERRCODE_DATA_CORRUPTED),
				 errmsg("stored version %d of flow \"%s\" is not valid", found_version, name),
				 errhint("Check it with flow_validate(flow_get('%s', %d)).", name, found_version)));
	}
	flow->mcxt = mcxt;
	flow->version = found_version;
	flow->xmin = xmin;
	snprintf(flow->cache_key, sizeof(flow->cache_key), "%s/%d/" UINT64_FORMAT,
			 name, found_version, xmin);
	FeExprBindFlow(flow->cache_key, flow->exprs);
	entry->flow = flow;
	entry->checked = MyProc->lxid;
	return flow;
}
