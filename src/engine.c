/*-------------------------------------------------------------------------
 *
 * engine.c
 *	  Advance a run: enter a state, run its actions, choose the next event,
 *	  leave, and repeat until the run waits, finishes, or reaches a step
 *	  that only the worker can perform.
 *
 * Run semantics (docs/semantics.md is the user-facing statement):
 *	  - entering a state runs onEntry, then actions, in order; an action's
 *		result is stored in the context under its "output";
 *	  - the next event is, in order: "error" if an action failed; the
 *		"event" of an sql result; the event of the first true condition;
 *		"always" if the state has it; otherwise the run waits;
 *	  - leaving a state runs onExit; entering a final state runs its
 *		actions and completes the run;
 *	  - an asynchronous action (http, llm, nlu, tool) becomes a pending
 *		step; the run stays "running" with a cursor saying where to resume,
 *		and events that arrive meanwhile queue in its inbox.
 *
 * Transactions and locks: everything happens in the caller's transaction.
 * An existing run is locked FOR UPDATE (catalog.c) before it is read, so
 * concurrent calls on one run serialise.  Rows produced by one call are
 * buffered and written once at the end; the NOTIFYs are queued then too,
 * so they are delivered at commit and never on rollback.
 *
 * Memory: all per-call state is palloc'd in the caller's context.  The
 * Duktape scope is closed in PG_FINALLY, so an error leaves nothing of the
 * run in the expression heap.
 *
 *-------------------------------------------------------------------------
 */
#include "flow_engine.h"

#include "commands/async.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

typedef enum FeActResult
{
	FE_ACT_OK,
	FE_ACT_ASYNC,
	FE_ACT_FAILED
} FeActResult;

typedef struct FeNote
{
	int			seq;
	char	   *event;
	char	   *from;
	char	   *to;
} FeNote;

/* One engine call on one run. */
typedef struct FeExec
{
	FeFlow	   *flow;
	FeRunRow	row;
	bool		is_new;
	char	   *initial_status;

	int			state;
	FePhase		phase;
	int			index;			/* next action of the phase */
	bool		failed;			/* an action of this state failed */
	char	   *result_event;	/* from an sql result */
	char	   *payload;		/* the event payload visible as `event` */
	char	   *error;			/* why an action of this state failed */

	/* the transition being taken (set when leaving) */
	char	   *next_event;
	const char *next_source;
	int			next_target;
	int			next_event_seq; /* inbox row being consumed, or 0 */

	int			transitions;
	bool		entered;		/* some state was entered in this call */
	bool		finished;
	List	   *steps;
	List	   *events;
	List	   *messages;
	List	   *notes;
	char	   *handoff;		/* set by a handoff step: JSON text */
} FeExec;

static const char *fe_phase_names[] = {"onEntry", "actions", "onExit"};

/* Runs being advanced by this backend right now (re-entry guard). */
static List *fe_active_runs = NIL;

/* ---------------------------------------------------------------------
 * Errors recorded in rows
 * ---------------------------------------------------------------------
 */
static char *
fe_error_json(FeExec *x, int sqlstate, const char *message, const char *detail,
			  const char *hint, const char *executor, const char *expression)
{
	StringInfoData b;

	initStringInfo(&b);
	appendStringInfo(&b, "{\"sqlstate\": %s, \"message\": %s",
					 FeJsonQuote(unpack_sql_state(sqlstate)), FeJsonQuote(message));
	if (detail)
		appendStringInfo(&b, ", \"detail\": %s", FeJsonQuote(detail));
	if (hint)
		appendStringInfo(&b, ", \"hint\": %s", FeJsonQuote(hint));
	appendStringInfo(&b, ", \"flow\": %s, \"version\": %d, \"state\": %s",
					 FeJsonQuote(x->flow->name), x->flow->version,
					 FeJsonQuote(x->flow->states[x->state].name));
	if (executor)
		appendStringInfo(&b, ", \"phase\": %s, \"action\": %d, \"executor\": %s",
						 FeJsonQuote(fe_phase_names[x->phase]), x->index,
						 FeJsonQuote(executor));
	if (expression)
		appendStringInfo(&b, ", \"expression\": %s", FeJsonQuote(expression));
	appendStringInfoChar(&b, '}');
	return b.data;
}

static char *
fe_expr_error(FeExec *x, FeEvalResult *r, const char *executor)
{
	const char *expr = "?";

	if (r->failed_expr >= 0 && r->failed_expr < list_length(x->flow->exprs))
		expr = ((FeExprSource *) list_nth(x->flow->exprs, r->failed_expr))->text;
	return fe_error_json(x, ERRCODE_EXTERNAL_ROUTINE_EXCEPTION,
						 psprintf("expression \"%s\" failed in state \"%s\" of flow \"%s\"",
								  expr, x->flow->states[x->state].name, x->flow->name),
						 psprintf("%s.", r->error), NULL, executor, expr);
}

/* ---------------------------------------------------------------------
 * Bookkeeping
 * ---------------------------------------------------------------------
 */
static FeStepRow *
fe_step(FeExec *x, FeAction *a, TimestampTz started)
{
	FeStepRow  *s = palloc0(sizeof(FeStepRow));

	s->seq = ++x->row.step_seq;
	s->state = x->flow->states[x->state].name;
	s->phase = fe_phase_names[x->phase];
	s->action = x->index;
	s->executor = a->executor_name;
	s->started_at = started;
	x->steps = lappend(x->steps, s);
	return s;
}

static void
fe_step_done(FeStepRow *s, const char *status, char *output, char *error)
{
	s->status = status;
	s->output = output;
	s->error = error;
	s->finished_at = GetCurrentTimestamp();
}

static void
fe_fail_run(FeExec *x, char *error)
{
	x->row.status = "failed";
	x->row.error = error;
	x->row.cursor = NULL;
	x->finished = true;
}

/* A JSON string value's text, or the JSON text itself for other values. */
static char *
fe_json_text(const char *json)
{
	if (json[0] == '"')
	{
		Jsonb	   *j = DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(json)));
		JsonbValue	v;

		if (JsonbExtractScalar(&j->root, &v) && v.type == jbvString)
			return pnstrdup(v.val.string.val, v.val.string.len);
	}
	return pstrdup(json);
}

/* Append a message to the conversation; assistant and human ones are the response. */
static FeMessageRow *
fe_say(FeExec *x, const char *role, const char *content)
{
	FeMessageRow *m = palloc0(sizeof(FeMessageRow));

	m->seq = ++x->row.message_seq;
	m->role = role;
	m->content = pstrdup(content);
	x->messages = lappend(x->messages, m);
	if (strcmp(role, "assistant") == 0 || strcmp(role, "human") == 0)
		x->row.response = m->content;
	return m;
}

/* Call an sql function for step s; its {"event": ...} result is noted. */
static bool
fe_call_sql(FeExec *x, FeAction *a, FeStepRow *s, const char *function, char *args,
			char **output, char **error)
{
	Jsonb	   *result;
	ErrorData  *edata = NULL;

	s->input = args;
	result = FeCatalogCallSql(function, args, &edata);
	if (edata)
	{
		*error = fe_error_json(x, edata->sqlerrcode,
							   psprintf("sql step %s failed in state \"%s\" of flow \"%s\": %s",
										function, x->flow->states[x->state].name,
										x->flow->name, edata->message),
							   edata->detail, edata->hint, a->executor_name, NULL);
		fe_step_done(s, "failed", NULL, *error);
		return false;
	}
	*output = result ? FeJsonbToText(result) : pstrdup("null");
	if (result && JB_ROOT_IS_OBJECT(result))
	{
		JsonbValue	v;

		if (getKeyJsonValueFromContainer(&result->root, "event", 5, &v) &&
			v.type == jbvString)
			x->result_event = pnstrdup(v.val.string.val, v.val.string.len);
	}
	return true;
}

static FeActResult
fe_tool_failed(FeExec *x, FeAction *a, FeStepRow *s, int sqlstate, char *message,
			   char *detail, char *hint, char **error)
{
	*error = fe_error_json(x, sqlstate, message, detail, hint, a->executor_name, NULL);
	fe_step_done(s, "failed", NULL, *error);
	return FE_ACT_FAILED;
}

/*
 * A tool step: look the tool up in flow_tools and check the parameters
 * against its schema.  An sql tool is called here, in the caller's
 * transaction; an http tool's request is templated with `params` in scope
 * and left pending for the worker.
 */
static FeActResult
fe_tool(FeExec *x, FeAction *a, FeStepRow *s, char **output, char **error)
{
	Jsonb	   *config = DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(s->input)));
	JsonbValue	v;
	Jsonb	   *params;
	FeToolRow	tool;
	char	   *name;
	char	   *why = NULL;
	const char *sname = x->flow->states[x->state].name;

	name = FeJsonbMemberStr(config, "name");
	if (name == NULL)
		return fe_tool_failed(x, a, s, ERRCODE_INVALID_PARAMETER_VALUE,
							  psprintf("tool step in state \"%s\" of flow \"%s\" names no tool",
									   sname, x->flow->name),
							  "Its config evaluated to no string \"name\".", NULL, error);
	if (getKeyJsonValueFromContainer(&config->root, "params", 6, &v))
		params = JsonbValueToJsonb(&v);
	else
		params = DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum("{}")));
	if (!FeCatalogFetchTool(name, &tool))
		return fe_tool_failed(x, a, s, ERRCODE_UNDEFINED_OBJECT,
							  psprintf("tool \"%s\" does not exist", name),
							  psprintf("State \"%s\" of flow \"%s\" calls it.", sname, x->flow->name),
							  "Insert it into flow_tools.", error);
	if (!FeSchemaValidate(tool.parameters, params, &why))
		return fe_tool_failed(x, a, s, ERRCODE_INVALID_PARAMETER_VALUE,
							  psprintf("parameters of tool \"%s\" do not match its schema", name),
							  psprintf("%s (state \"%s\" of flow \"%s\").", why, sname, x->flow->name),
							  NULL, error);
	if (strcmp(tool.kind, "sql") == 0)
	{
		char	   *function = FeJsonbMemberStr(tool.config, "function");

		if (function == NULL)
			return fe_tool_failed(x, a, s, ERRCODE_INVALID_PARAMETER_VALUE,
								  psprintf("sql tool \"%s\" names no function", name),
								  "Its config has no string \"function\".", NULL, error);
		return fe_call_sql(x, a, s, function, FeJsonbToText(params), output, error)
			? FE_ACT_OK : FE_ACT_FAILED;
	}
	else
	{
		List	   *exprs = NIL;
		char	   *perr = NULL;
		FeTmpl	   *t = FeTmplParse(tool.config, &exprs, &perr);
		char	   *key = psprintf("tool:%s:" UINT64_FORMAT, name, tool.xmin);
		FeEvalResult r = {0};
		bool		opened;

		ListCell   *lc;

		foreach(lc, exprs)
			if (perr == NULL)
				perr = FeExprCompileCheck(((FeExprSource *) lfirst(lc))->text);
		if (t == NULL || perr)
			return fe_tool_failed(x, a, s, ERRCODE_INVALID_PARAMETER_VALUE,
								  psprintf("config of tool \"%s\" is not a valid template", name),
								  psprintf("%s", perr), NULL, error);
		FeExprBindFlow(key, exprs);
		opened = FeExprScopeOpen(key, psprintf("{\"params\": %s}", FeJsonbToText(params)), &perr);
		if (opened)
		{
			r = FeExprEvalTemplate(t);
			FeExprScopeClose();
		}
		FeExprForgetFlow(key);
		if (!opened || !r.ok)
			return fe_tool_failed(x, a, s, ERRCODE_EXTERNAL_ROUTINE_INVOCATION_EXCEPTION,
								  psprintf("config of tool \"%s\" could not be evaluated", name),
								  psprintf("%s.", opened ? r.error : perr), NULL, error);
		s->input = psprintf("{\"tool\": %s, \"params\": %s, \"request\": %s}",
							FeJsonQuote(name), FeJsonbToText(params), r.json);
		s->status = "pending";
		return FE_ACT_ASYNC;
	}
}

/* ---------------------------------------------------------------------
 * Executors
 * ---------------------------------------------------------------------
 */
static FeActResult
fe_act(FeExec *x, FeAction *a, char **error)
{
	FeStepRow  *s = fe_step(x, a, GetCurrentTimestamp());
	FeEvalResult r;
	char	   *output = NULL;
	char	   *err = NULL;

	switch (a->executor)
	{
		case FE_EXEC_SET:
			{
				/* evaluate every value first, so a failing set assigns nothing */
				StringInfoData b;
				char	  **values = palloc(sizeof(char *) * a->nset);
				int			i;

				initStringInfo(&b);
				appendStringInfoChar(&b, '{');
				for (i = 0; i < a->nset; i++)
				{
					r = FeExprEvalTemplate(a->set_values[i]);
					if (!r.ok)
					{
						*error = fe_expr_error(x, &r, a->executor_name);
						fe_step_done(s, "failed", NULL, *error);
						return FE_ACT_FAILED;
					}
					values[i] = r.json;
					appendStringInfo(&b, "%s%s: %s", i ? ", " : "",
									 FeJsonQuote(a->set_names[i]), r.json);
				}
				appendStringInfoChar(&b, '}');
				for (i = 0; i < a->nset && err == NULL; i++)
					(void) FeExprAssignJson(a->set_names[i], values[i], &err);
				output = b.data;
				break;
			}
		case FE_EXEC_RESPOND:
			{
				FeMessageRow *m;

				r = FeExprEvalTemplate(a->respond_text);
				if (!r.ok)
				{
					*error = fe_expr_error(x, &r, a->executor_name);
					fe_step_done(s, "failed", NULL, *error);
					return FE_ACT_FAILED;
				}
				m = fe_say(x, "assistant", fe_json_text(r.json));
				output = psprintf("{\"text\": %s}", FeJsonQuote(m->content));
				if (a->output && !FeExprAssignJson(a->output, FeJsonQuote(m->content), &err))
					break;
				fe_step_done(s, "completed", output, NULL);
				return FE_ACT_OK;
			}
		case FE_EXEC_SQL:
			{
				char	   *args = "{}";

				if (a->sql_args)
				{
					r = FeExprEvalTemplate(a->sql_args);
					if (!r.ok)
					{
						*error = fe_expr_error(x, &r, a->executor_name);
						fe_step_done(s, "failed", NULL, *error);
						return FE_ACT_FAILED;
					}
					args = r.json;
				}
				if (!fe_call_sql(x, a, s, a->sql_function, args, &output, error))
					return FE_ACT_FAILED;
				break;
			}
		case FE_EXEC_HANDOFF:
			{
				Jsonb	   *cfg = NULL;
				char	   *extra;

				if (a->config)
				{
					r = FeExprEvalTemplate(a->config);
					if (!r.ok)
					{
						*error = fe_expr_error(x, &r, a->executor_name);
						fe_step_done(s, "failed", NULL, *error);
						return FE_ACT_FAILED;
					}
					cfg = DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(r.json)));
				}
				extra = psprintf("{\"state\": %s, \"at\": %s}",
								 FeJsonQuote(x->flow->states[x->state].name),
								 FeJsonQuote(timestamptz_to_str(GetCurrentTimestamp())));
				if (cfg && JB_ROOT_IS_OBJECT(cfg) && !JB_ROOT_IS_SCALAR(cfg))
					output = FeJsonbToText(DatumGetJsonbP(
														  DirectFunctionCall2(jsonb_concat, JsonbPGetDatum(cfg),
																			  DirectFunctionCall1(jsonb_in, CStringGetDatum(extra)))));
				else
					output = extra;
				x->handoff = output;
				break;
			}
		case FE_EXEC_HTTP:
		case FE_EXEC_LLM:
		case FE_EXEC_NLU:
		case FE_EXEC_TOOL:
			if (a->config)
			{
				r = FeExprEvalTemplate(a->config);
				if (!r.ok)
				{
					*error = fe_expr_error(x, &r, a->executor_name);
					fe_step_done(s, "failed", NULL, *error);
					return FE_ACT_FAILED;
				}
				s->input = r.json;
			}
			else
				s->input = "{}";
			if (a->executor == FE_EXEC_TOOL)
			{
				FeActResult tr = fe_tool(x, a, s, &output, error);

				if (tr != FE_ACT_OK)
					return tr;
				break;
			}
			s->status = "pending";
			return FE_ACT_ASYNC;
	}

	if (err == NULL && a->output && output)
		(void) FeExprAssignJson(a->output, output, &err);
	if (err)
	{
		*error = fe_error_json(x, ERRCODE_PROGRAM_LIMIT_EXCEEDED,
							   psprintf("could not store the result of a %s step in variable \"%s\"",
										a->executor_name, a->output),
							   psprintf("%s.", err), NULL, a->executor_name, NULL);
		fe_step_done(s, "failed", NULL, *error);
		return FE_ACT_FAILED;
	}
	fe_step_done(s, "completed", output, NULL);
	return FE_ACT_OK;
}

/* ---------------------------------------------------------------------
 * The cursor: where a run resumes when its pending step completes
 * ---------------------------------------------------------------------
 */
static char *
fe_cursor_json(FeExec *x, int step)
{
	StringInfoData b;

	initStringInfo(&b);
	appendStringInfo(&b, "{\"step\": %d, \"phase\": %d, \"index\": %d, \"failed\": %s",
					 step, (int) x->phase, x->index, x->failed ? "true" : "false");
	if (x->result_event)
		appendStringInfo(&b, ", \"result_event\": %s", FeJsonQuote(x->result_event));
	if (x->error)
		appendStringInfo(&b, ", \"error\": %s", x->error);
	if (x->payload)
		appendStringInfo(&b, ", \"payload\": %s", x->payload);
	if (x->phase == FE_PHASE_EXIT)
		appendStringInfo(&b, ", \"event\": %s, \"source\": %s, \"target\": %d, \"event_seq\": %d",
						 FeJsonQuote(x->next_event), FeJsonQuote(x->next_source),
						 x->next_target, x->next_event_seq);
	appendStringInfoChar(&b, '}');
	return b.data;
}

static int
fe_cursor_int(Jsonb *c, const char *key)
{
	JsonbValue	v;

	if (!FeJsonbMember(c, key, &v) || v.type != jbvNumeric)
		return 0;
	return DatumGetInt32(DirectFunctionCall1(numeric_int4, NumericGetDatum(v.val.numeric)));
}

/* Restore x from the run's cursor; returns the pending step's seq. */
static int
fe_cursor_restore(FeExec *x)
{
	Jsonb	   *c = DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(x->row.cursor)));
	JsonbValue	v;

	x->phase = (FePhase) fe_cursor_int(c, "phase");
	x->index = fe_cursor_int(c, "index");
	x->failed = FeJsonbMember(c, "failed", &v) && v.type == jbvBool && v.val.boolean;
	x->result_event = FeJsonbMemberStr(c, "result_event");
	if (FeJsonbMember(c, "error", &v))
		x->error = FeJsonbToText(JsonbValueToJsonb(&v));
	if (FeJsonbMember(c, "payload", &v))
	{
		Jsonb	   *p = JsonbValueToJsonb(&v);

		x->payload = FeJsonbToText(p);
	}
	if (x->phase == FE_PHASE_EXIT)
	{
		x->next_event = FeJsonbMemberStr(c, "event");
		x->next_source = FeJsonbMemberStr(c, "source");
		x->next_target = fe_cursor_int(c, "target");
		x->next_event_seq = fe_cursor_int(c, "event_seq");
	}
	return fe_cursor_int(c, "step");
}

/* ---------------------------------------------------------------------
 * The loop
 * ---------------------------------------------------------------------
 */
static void
fe_take(FeExec *x, const char *event, const char *source, int target, int inbox_seq)
{
	x->next_event = pstrdup(event);
	x->next_source = source;
	x->next_target = target;
	x->next_event_seq = inbox_seq;
	x->phase = FE_PHASE_EXIT;
	x->index = 0;
}

/*
 * Route a failure: to the state's "error" transition if it has one (and we
 * are not already leaving through it), else fail the run.
 */
static bool
fe_route_error(FeExec *x, char *error)
{
	FeState    *st = &x->flow->states[x->state];
	FeTransition *t = FeStateTransition(st, "error");

	if (t == NULL || st->final ||
		(x->phase == FE_PHASE_EXIT && x->next_event && strcmp(x->next_event, "error") == 0))
	{
		fe_fail_run(x, error);
		return false;
	}
	/* the error becomes the payload of the "error" event */
	x->payload = error;
	FeExprScopeSetEvent(error);
	fe_take(x, "error", "error", t->target, 0);
	return true;
}

/*
 * An action of the current state failed: while leaving, route the error at
 * once; otherwise skip the state's remaining actions and let fe_decide
 * raise the error event.
 */
static void
fe_action_failed(FeExec *x, char *error)
{
	if (x->phase == FE_PHASE_EXIT)
		(void) fe_route_error(x, error);
	else
	{
		x->failed = true;
		x->error = error;
		x->index = x->flow->states[x->state].nactions[x->phase];
	}
}

static void
fe_record_transition(FeExec *x, const char *event, const char *source,
					 const char *from, const char *to, int inbox_seq)
{
	FeNote	   *n = palloc0(sizeof(FeNote));

	if (inbox_seq > 0)
	{
		FeCatalogConsumeEvent(&x->row.id, inbox_seq, "consumed", from, to);
		n->seq = inbox_seq;
	}
	else
	{
		FeEventRow *e = palloc0(sizeof(FeEventRow));

		e->seq = ++x->row.event_seq;
		e->event = pstrdup(event);
		e->source = source;
		e->payload = (strcmp(source, "external") == 0 || strcmp(source, "timer") == 0 ||
					  strcmp(source, "error") == 0) ? x->payload : NULL;
		e->status = "consumed";
		e->from_state = (char *) from;
		e->to_state = (char *) to;
		x->events = lappend(x->events, e);
		n->seq = e->seq;
	}
	n->event = pstrdup(event);
	n->from = (char *) from;
	n->to = (char *) to;
	x->notes = lappend(x->notes, n);
}

static bool fe_drain_inbox(FeExec *x);

/*
 * A user_message reached a state that elicits a value: check the answer.
 * Valid: store it and take "answered".  Invalid: re-ask, and after the
 * last attempt take "exhausted" (or route the failure).
 */
static void
fe_elicit(FeExec *x, FeState *st, int inbox_seq)
{
	FeElicit   *el = st->elicit;
	FeEvalResult r;
	char	   *answer;
	char	   *err = NULL;
	int			attempts;
	FeTransition *t;

	r = FeExprEvalTemplate(el->attempts);
	attempts = (r.ok ? atoi(r.json) : 0) + 1;
	r = FeExprEvalTemplate(el->answer);
	if (r.ok)
	{
		answer = r.json;
		r = FeExprEvalCondition(el->check);
	}
	if (!r.ok)
	{
		(void) fe_route_error(x, fe_expr_error(x, &r, NULL));
		return;
	}
	if (r.truth)
	{
		if (!FeExprAssignJson(el->variable, answer, &err) ||
			!FeExprAssignJson("_elicit", NULL, &err))
		{
			(void) fe_route_error(x, fe_error_json(x, ERRCODE_PROGRAM_LIMIT_EXCEEDED,
												   psprintf("could not store the answer in variable \"%s\"", el->variable),
												   psprintf("%s.", err), NULL, NULL, NULL));
			return;
		}
		t = FeStateTransition(st, "answered");
		fe_take(x, "answered", "external", t->target, inbox_seq);
		return;
	}
	if (attempts < el->max_attempts)
	{
		(void) FeExprAssignJson("_elicit", psprintf("{\"state\": %s, \"attempts\": %d}",
												   FeJsonQuote(st->name), attempts), &err);
		fe_record_transition(x, "user_message", "external", st->name, st->name, inbox_seq);
		r = FeExprEvalTemplate(el->retry_prompt);
		if (!r.ok)
		{
			(void) fe_route_error(x, fe_expr_error(x, &r, "respond"));
			return;
		}
		(void) fe_say(x, "assistant", fe_json_text(r.json));
		x->row.status = "waiting";
		if (!fe_drain_inbox(x))
			x->finished = true;
		return;
	}
	(void) FeExprAssignJson("_elicit", NULL, &err);
	x->payload = psprintf("{\"variable\": %s, \"attempts\": %d, \"answer\": %s}",
						  FeJsonQuote(el->variable), attempts, answer);
	FeExprScopeSetEvent(x->payload);
	t = FeStateTransition(st, "exhausted");
	if (t)
	{
		fe_take(x, "exhausted", "external", t->target, inbox_seq);
		return;
	}
	(void) fe_route_error(x, fe_error_json(x, ERRCODE_INVALID_PARAMETER_VALUE,
										   psprintf("no valid answer for \"%s\" in state \"%s\" of flow \"%s\" after %d attempts",
													el->variable, st->name, x->flow->name, attempts),
										   "The state has no \"exhausted\" transition.",
										   "Add an \"exhausted\" transition, for example to a handoff state.",
										   NULL, NULL));
}

/* Deliver an external event to a waiting run. */
static void
fe_deliver(FeExec *x, const char *event, const char *payload, int inbox_seq)
{
	FeState    *st = &x->flow->states[x->state];

	x->payload = payload ? pstrdup(payload) : pstrdup("{}");
	FeExprScopeSetEvent(x->payload);
	if (st->elicit && strcmp(event, "user_message") == 0)
		fe_elicit(x, st, inbox_seq);
	else
		fe_take(x, event, "external", FeStateTransition(st, event)->target, inbox_seq);
}

/* Is `event` one a waiting run in state st takes from outside? */
static bool
fe_accepts(FeState *st, const char *event)
{
	if (st->elicit && strcmp(event, "user_message") == 0)
		return true;
	return strcmp(event, "always") != 0 && FeStateTransition(st, event) != NULL;
}

/* Take the next acceptable event from the inbox; false if none. */
static bool
fe_drain_inbox(FeExec *x)
{
	while (x->row.queued_events > 0)
	{
		int			seq;
		char	   *event;
		char	   *payload;
		FeState    *st = &x->flow->states[x->state];

		if (!FeCatalogNextQueuedEvent(&x->row.id, &seq, &event, &payload))
		{
			x->row.queued_events = 0;
			return false;
		}
		x->row.queued_events--;
		if (!fe_accepts(st, event))
		{
			/* recorded, not lost: the row keeps the event and why it was refused */
			FeCatalogConsumeEvent(&x->row.id, seq, "rejected", st->name, NULL);
			continue;
		}
		fe_deliver(x, event, payload, seq);
		return true;
	}
	return false;
}

static void
fe_decide(FeExec *x)
{
	FeState    *st = &x->flow->states[x->state];
	FeTransition *t;
	int			i;

	if (st->final && x->failed)
	{
		fe_fail_run(x, x->error);
		return;
	}
	if (st->final)
	{
		x->row.status = "completed";
		x->row.cursor = NULL;
		x->finished = true;
		return;
	}
	if (x->failed)
	{
		(void) fe_route_error(x, x->error);
		return;
	}
	if (x->result_event)
	{
		t = FeStateTransition(st, x->result_event);
		if (t == NULL)
		{
			(void) fe_route_error(x,
								  fe_error_json(x, ERRCODE_INVALID_PARAMETER_VALUE,
												psprintf("state \"%s\" of flow \"%s\" has no transition for event \"%s\"",
														 st->name, x->flow->name, x->result_event),
												"An sql step returned this event.",
												psprintf("The state has transitions for: %s.",
														 FeStateAcceptedEvents(st)),
												NULL, NULL));
			return;
		}
		fe_take(x, x->result_event, "result", t->target, 0);
		return;
	}
	for (i = 0; i < st->nconditions; i++)
	{
		FeEvalResult r = FeExprEvalCondition(st->conditions[i].expr);

		if (!r.ok)
		{
			(void) fe_route_error(x, fe_expr_error(x, &r, NULL));
			return;
		}
		if (r.truth)
		{
			t = FeStateTransition(st, st->conditions[i].event);
			fe_take(x, st->conditions[i].event, "condition", t->target, 0);
			return;
		}
	}
	t = FeStateTransition(st, "always");
	if (t)
	{
		fe_take(x, "always", "always", t->target, 0);
		return;
	}
	/* nothing to do on our own: wait, unless the inbox has something */
	x->row.status = "waiting";
	x->row.cursor = NULL;
	if (!fe_drain_inbox(x))
		x->finished = true;		/* for this call */
}

static void
fe_enter(FeExec *x)
{
	FeState    *from = &x->flow->states[x->state];
	FeState    *to = &x->flow->states[x->next_target];

	if (++x->transitions > fe_max_transitions)
	{
		fe_fail_run(x, fe_error_json(x, ERRCODE_PROGRAM_LIMIT_EXCEEDED,
									 psprintf("run of flow \"%s\" made more than %d transitions in one call",
											  x->flow->name, fe_max_transitions),
									 "The flow probably loops without waiting for an event.",
									 "Raise flow_engine.max_transitions, or make the loop wait for an event.",
									 NULL, NULL));
		return;
	}
	fe_record_transition(x, x->next_event, x->next_source, from->name, to->name,
						 x->next_event_seq);
	x->state = x->next_target;
	x->entered = true;
	x->row.state = to->name;
	x->row.status = "running";
	x->phase = FE_PHASE_ENTRY;
	x->index = 0;
	x->failed = false;
	x->error = NULL;
	x->result_event = NULL;
	x->next_event = NULL;
	x->next_event_seq = 0;
}

/* Run until the run waits, finishes, or parks on an asynchronous step. */
static void
fe_run(FeExec *x)
{
	while (!x->finished)
	{
		FeState    *st = &x->flow->states[x->state];

		CHECK_FOR_INTERRUPTS();
		if (x->index < st->nactions[x->phase] &&
			!(x->failed && x->phase != FE_PHASE_EXIT))
		{
			FeAction   *a = &st->actions[x->phase][x->index];
			char	   *error = NULL;

			switch (fe_act(x, a, &error))
			{
				case FE_ACT_OK:
					x->index++;
					break;
				case FE_ACT_ASYNC:
					x->row.status = "running";
					x->row.cursor = fe_cursor_json(x, x->row.step_seq);
					return;
				case FE_ACT_FAILED:
					fe_action_failed(x, error);
					break;
			}
			continue;
		}
		switch (x->phase)
		{
			case FE_PHASE_ENTRY:
				x->phase = FE_PHASE_ACTIONS;
				x->index = 0;
				break;
			case FE_PHASE_ACTIONS:
				fe_decide(x);
				break;
			case FE_PHASE_EXIT:
				fe_enter(x);
				break;
		}
	}
}

/* ---------------------------------------------------------------------
 * Calls
 * ---------------------------------------------------------------------
 */
static void
fe_notify(FeExec *x)
{
	ListCell   *lc;
	char	   *id = DatumGetCString(DirectFunctionCall1(uuid_out, UUIDPGetDatum(&x->row.id)));
	int			i = 0;

	if (x->notes == NIL && (strcmp(x->initial_status, x->row.status) != 0 ||
							x->messages != NIL || x->handoff))
	{
		FeNote	   *n = palloc0(sizeof(FeNote));

		n->seq = x->row.event_seq;
		n->to = x->row.state;
		x->notes = list_make1(n);
	}
	foreach(lc, x->notes)
	{
		FeNote	   *n = (FeNote *) lfirst(lc);
		bool		last = (++i == list_length(x->notes));
		StringInfoData b;

		initStringInfo(&b);
		appendStringInfo(&b, "{\"run\": \"%s\", \"flow\": %s, \"version\": %d, \"seq\": %d, "
						 "\"event\": %s, \"from\": %s, \"state\": %s, \"status\": \"%s\", "
						 "\"message_seq\": %d",
						 id, FeJsonQuote(x->flow->name), x->flow->version, n->seq,
						 n->event ? FeJsonQuote(n->event) : "null",
						 n->from ? FeJsonQuote(n->from) : "null",
						 FeJsonQuote(n->to), last ? x->row.status : "running",
						 x->row.message_seq);
		if (x->row.session)
			appendStringInfo(&b, ", \"session\": %s", FeJsonQuote(x->row.session));
		if (last && x->handoff)
			appendStringInfo(&b, ", \"handoff\": %s", x->handoff);
		appendStringInfoChar(&b, '}');
		Async_Notify(FE_CHANNEL, b.data);
	}
}

static FeRunResult *
fe_result(FeExec *x, Jsonb *context)
{
	FeRunResult *r = palloc0(sizeof(FeRunResult));

	memcpy(&r->id, &x->row.id, sizeof(pg_uuid_t));
	r->flow = x->row.flow;
	r->version = x->row.version;
	r->status = x->row.status;
	r->state = x->row.state;
	r->context = context;
	r->response = x->row.response;
	r->error = x->row.error;
	return r;
}

/*
 * A run that waits in a state with a timeout gets a timer, counted from
 * when it began to wait there; the worker fires it.  Work for the worker
 * (a pending step, a timer) wakes it when this transaction commits.
 */
static void
fe_set_timer(FeExec *x)
{
	FeState    *st = &x->flow->states[x->state];
	ListCell   *lc;

	if (strcmp(x->row.status, "waiting") != 0 || st->timeout_ms <= 0)
		x->row.timeout_at = 0;
	else if (x->entered || x->row.timeout_at == 0 ||
			 strcmp(x->initial_status, "waiting") != 0)
	{
		x->row.timeout_at = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), st->timeout_ms);
		FeWorkerWakeAtCommit();
	}
	foreach(lc, x->steps)
		if (strcmp(((FeStepRow *) lfirst(lc))->status, "pending") == 0)
		{
			FeWorkerWakeAtCommit();
			break;
		}
}

/* Write everything the call produced, and queue its notifications. */
static FeRunResult *
fe_persist(FeExec *x)
{
	char	   *err = NULL;
	Jsonb	   *context;
	bool		done = strcmp(x->row.status, "completed") == 0 ||
		strcmp(x->row.status, "failed") == 0 ||
		strcmp(x->row.status, "cancelled") == 0;

	/* a finished run takes no more events: refuse what is still queued */
	if (done && x->row.queued_events > 0)
	{
		FeCatalogCancelPending(&x->row.id);
		x->row.queued_events = 0;
	}
	fe_set_timer(x);
	x->row.context = FeExprScopeContext(&err);
	if (x->row.context == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("could not serialise the context of a run of flow \"%s\"", x->flow->name),
				 errdetail("%s.", err)));
	FeCatalogSaveRun(&x->row, x->is_new, done, &context);
	if (x->handoff)
		FeCatalogSetHandoff(&x->row.id, x->handoff);
	FeWaitNoteRun(&x->row.id);
	FeCatalogInsertSteps(&x->row.id, x->steps);
	FeCatalogInsertEvents(&x->row.id, x->events);
	FeCatalogInsertMessages(&x->row.id, x->messages);
	fe_notify(x);
	return fe_result(x, context);
}

static bool
fe_is_active(pg_uuid_t *id)
{
	ListCell   *lc;

	foreach(lc, fe_active_runs)
		if (memcmp(lfirst(lc), id, sizeof(pg_uuid_t)) == 0)
			return true;
	return false;
}

/* Body of a call: open the scope, run `body`, persist; always clean up. */
typedef void (*FeBody) (FeExec *x, void *arg);

static FeRunResult *
fe_call(FeExec *x, FeBody body, void *arg)
{
	FeRunResult *volatile result = NULL;
	pg_uuid_t  *id;
	char	   *err = NULL;
	MemoryContext old;

	if (fe_is_active(&x->row.id))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_IN_USE),
				 errmsg("flow run %s is already being advanced",
						DatumGetCString(DirectFunctionCall1(uuid_out, UUIDPGetDatum(&x->row.id)))),
				 errdetail("An sql step of the run tried to advance the same run."),
				 errhint("Return {\"event\": ...} from the sql step instead.")));
	old = MemoryContextSwitchTo(TopTransactionContext);
	id = palloc(sizeof(pg_uuid_t));
	memcpy(id, &x->row.id, sizeof(pg_uuid_t));
	fe_active_runs = lappend(fe_active_runs, id);
	MemoryContextSwitchTo(old);

	if (!FeExprScopeOpen(x->flow->cache_key, x->row.context, &err))
	{
		fe_active_runs = list_delete_ptr(fe_active_runs, id);
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("could not load the context of a run of flow \"%s\"", x->flow->name),
				 errdetail("%s.", err)));
	}
	PG_TRY();
	{
		body(x, arg);
		result = fe_persist(x);
	}
	PG_FINALLY();
	{
		FeExprScopeClose();
		fe_active_runs = list_delete_ptr(fe_active_runs, id);
	}
	PG_END_TRY();
	return result;
}

static void
fe_exec_init(FeExec *x, FeFlow *flow, FeRunRow *row, bool is_new)
{
	memset(x, 0, sizeof(FeExec));
	x->flow = flow;
	x->row = *row;
	x->is_new = is_new;
	x->initial_status = pstrdup(row->status);
	x->state = FeFlowStateIndex(flow, row->state);
	if (x->state < 0)
		ereport(ERROR,
				(errcode(ERRCODE_DATA_CORRUPTED),
				 errmsg("run of flow \"%s\" is in state \"%s\", which version %d does not have",
						flow->name, row->state, flow->version)));
	x->phase = FE_PHASE_ACTIONS;
	x->index = flow->states[x->state].nactions[FE_PHASE_ACTIONS];
}

static void
fe_body_start(FeExec *x, void *arg)
{
	FeNote	   *n = palloc0(sizeof(FeNote));
	FeEventRow *e = palloc0(sizeof(FeEventRow));

	e->seq = ++x->row.event_seq;
	e->event = "start";
	e->source = "start";
	e->status = "consumed";
	e->to_state = x->row.state;
	x->events = lappend(x->events, e);
	n->seq = e->seq;
	n->event = "start";
	n->to = x->row.state;
	x->notes = lappend(x->notes, n);
	x->phase = FE_PHASE_ENTRY;
	x->index = 0;
	fe_run(x);
}

/* flow_execute: start a run and advance it. */
FeRunResult *
FeEngineExecute(const char *flowname, Jsonb *input, const char *key, const char *session)
{
	FeFlow	   *flow = FeFlowLoad(flowname, 0, true);
	FeRunRow	row = {0};
	FeExec		x;
	char	   *active;

	if (JB_ROOT_IS_SCALAR(input) || !JB_ROOT_IS_OBJECT(input))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("input of flow \"%s\" must be a JSON object", flowname),
				 errdetail("The input given is %s.",
						   JB_ROOT_IS_SCALAR(input) ? "a scalar" : "an array"),
				 errhint("Pass an object such as '{\"order_id\": 42}'; its keys become context variables.")));

	if (!pg_strong_random(row.id.data, UUID_LEN))
		ereport(ERROR,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("could not generate a run id")));
	row.id.data[6] = (row.id.data[6] & 0x0f) | 0x40;	/* version 4 */
	row.id.data[8] = (row.id.data[8] & 0x3f) | 0x80;	/* RFC 4122 variant */
	row.flow = flow->name;
	row.version = flow->version;
	row.status = "running";
	row.state = flow->states[flow->initial].name;
	row.context = FeJsonbToText(input);
	row.key = key ? pstrdup(key) : NULL;
	if (session && (active = FeCatalogActiveSessionRun(session)) != NULL)
		ereport(ERROR,
				(errcode(ERRCODE_UNIQUE_VIOLATION),
				 errmsg("session \"%s\" already has an active run", session),
				 errdetail("Run %s has not finished; a session has at most one active run.", active),
				 errhint("Send the turn to that run with flow_process(), or end it with flow_cancel().")));
	row.session = session ? pstrdup(session) : NULL;

	fe_exec_init(&x, flow, &row, true);
	x.initial_status = "new";
	return fe_call(&x, fe_body_start, NULL);
}

static char *
fe_run_label(pg_uuid_t *id)
{
	return DatumGetCString(DirectFunctionCall1(uuid_out, UUIDPGetDatum(id)));
}

/* Lock the run, or raise that it does not exist. */
static void
fe_lock(pg_uuid_t *id, FeRunRow *row)
{
	if (!FeCatalogLockRun(id, row))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("flow run %s does not exist", fe_run_label(id))));
}

static bool
fe_status_finished(const char *status)
{
	return strcmp(status, "completed") == 0 || strcmp(status, "failed") == 0 ||
		strcmp(status, "cancelled") == 0;
}

typedef struct FeSendArg
{
	const char *event;
	char	   *payload;
} FeSendArg;

/*
 * Record an external event the run does not take now: queued in its
 * inbox, or kept as rejected with the state that did not take it.
 */
static void
fe_keep_event(FeExec *x, const char *event, char *payload, bool queue)
{
	FeEventRow *e = palloc0(sizeof(FeEventRow));

	e->seq = ++x->row.event_seq;
	e->event = pstrdup(event);
	e->source = "external";
	e->payload = payload;
	x->events = lappend(x->events, e);
	if (queue)
	{
		e->status = "queued";
		x->row.queued_events++;
	}
	else
	{
		e->status = "rejected";
		e->from_state = x->row.state;
	}
}

static void
fe_body_send(FeExec *x, void *arg)
{
	FeSendArg  *a = (FeSendArg *) arg;

	fe_deliver(x, a->event, a->payload, 0);
	fe_run(x);
}

static void
fe_body_queue(FeExec *x, void *arg)
{
	FeSendArg  *a = (FeSendArg *) arg;

	fe_keep_event(x, a->event, a->payload, true);
}

/* Does some state of the flow take `event` from outside? */
static bool
fe_flow_accepts(FeFlow *flow, const char *event)
{
	int			i;

	for (i = 0; i < flow->nstates; i++)
		if (fe_accepts(&flow->states[i], event))
			return true;
	return false;
}

/* flow_send: deliver an event, or queue it while the run is busy. */
FeRunResult *
FeEngineSend(pg_uuid_t *id, const char *event, Jsonb *payload)
{
	FeRunRow	row;
	FeFlow	   *flow;
	FeExec		x;
	FeSendArg	a;
	FeState    *st;

	fe_lock(id, &row);
	if (fe_status_finished(row.status))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("cannot send event \"%s\" to flow run %s", event, fe_run_label(id)),
				 errdetail("The run of flow \"%s\" is %s, in state \"%s\".", row.flow, row.status, row.state),
				 errhint("Start a new run with flow_execute().")));
	flow = FeFlowLoad(row.flow, row.version, false);
	fe_exec_init(&x, flow, &row, false);
	st = &flow->states[x.state];
	a.event = event;
	a.payload = FeJsonbToText(payload);

	if (strcmp(row.status, "waiting") == 0)
	{
		if (!fe_accepts(st, event))
		{
			char	   *accepted = FeStateAcceptedEvents(st);

			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("state \"%s\" of flow \"%s\" does not accept event \"%s\"",
							st->name, flow->name, event),
					 *accepted ? errdetail("It accepts: %s.", accepted)
					 : errdetail("It accepts no events."),
					 errhint("Run %s is waiting in state \"%s\".", fe_run_label(id), st->name)));
		}
		return fe_call(&x, fe_body_send, &a);
	}

	/* busy: queue it, as long as some state of the flow could take it */
	if (!fe_flow_accepts(flow, event))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("flow \"%s\" has no state that accepts event \"%s\"", flow->name, event),
				 errdetail("Run %s is busy in state \"%s\"; the event was not queued.",
						   fe_run_label(id), st->name)));
	return fe_call(&x, fe_body_queue, &a);
}

typedef struct FeMessageArg
{
	const char *role;
	const char *content;
	const char *event;
	char	   *payload;
	char		mode;			/* d: deliver, q: queue, r: record as rejected */
	int			seq;
} FeMessageArg;

static void
fe_body_message(FeExec *x, void *arg)
{
	FeMessageArg *a = (FeMessageArg *) arg;

	a->seq = fe_say(x, a->role, a->content)->seq;
	if (a->mode == 'd')
	{
		fe_deliver(x, a->event, a->payload, 0);
		fe_run(x);
		return;
	}
	fe_keep_event(x, a->event, a->payload, a->mode == 'q');
}

/*
 * flow_message: a user or human message joins the conversation and is
 * delivered as user_message or human_message: at once if the run waits in
 * a state that takes it, queued while the run is busy, and otherwise kept
 * as a rejected event.  Returns the message's seq.
 */
int
FeEngineMessage(pg_uuid_t *id, const char *role, const char *content, Jsonb *payload)
{
	FeRunRow	row;
	FeFlow	   *flow;
	FeExec		x;
	FeMessageArg a = {0};

	if (strcmp(role, "user") != 0 && strcmp(role, "human") != 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("message role must be \"user\" or \"human\", not \"%s\"", role),
				 errhint("Assistant messages come from the flow's respond steps.")));
	fe_lock(id, &row);
	if (fe_status_finished(row.status))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("cannot add a message to flow run %s", fe_run_label(id)),
				 errdetail("The run of flow \"%s\" is %s, in state \"%s\".", row.flow, row.status, row.state),
				 errhint("flow_process() starts a new run for a session whose run has finished.")));
	flow = FeFlowLoad(row.flow, row.version, false);
	fe_exec_init(&x, flow, &row, false);
	a.role = role;
	a.content = content;
	a.event = strcmp(role, "user") == 0 ? "user_message" : "human_message";
	a.payload = payload ? FeJsonbToText(payload)
		: psprintf("{\"text\": %s}", FeJsonQuote(content));
	a.mode = 'r';
	if (strcmp(row.status, "waiting") == 0)
	{
		if (fe_accepts(&flow->states[x.state], a.event))
			a.mode = 'd';
	}
	else if (fe_flow_accepts(flow, a.event))
		a.mode = 'q';
	(void) fe_call(&x, fe_body_message, &a);
	return a.seq;
}

static void
fe_body_cancel(FeExec *x, void *arg)
{
	FeCatalogCancelPending(&x->row.id);
	x->row.status = "cancelled";
	x->row.cursor = NULL;
	x->row.queued_events = 0;
}

/* flow_cancel */
FeRunResult *
FeEngineCancel(pg_uuid_t *id)
{
	FeRunRow	row;
	FeExec		x;

	fe_lock(id, &row);
	if (fe_status_finished(row.status))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("cannot cancel flow run %s", fe_run_label(id)),
				 errdetail("The run of flow \"%s\" is already %s.", row.flow, row.status)));
	fe_exec_init(&x, FeFlowLoad(row.flow, row.version, false), &row, false);
	return fe_call(&x, fe_body_cancel, NULL);
}

typedef struct FeCompleteArg
{
	int			step;
	char	   *output;
	const char *error;
} FeCompleteArg;

static void
fe_body_complete(FeExec *x, void *arg)
{
	FeCompleteArg *a = (FeCompleteArg *) arg;
	FeAction   *act;
	char	   *err = NULL;

	/* x was restored from the cursor by FeEngineStepComplete */
	if (x->payload)
		FeExprScopeSetEvent(x->payload);
	act = &x->flow->states[x->state].actions[x->phase][x->index];
	if (a->error)
	{
		char	   *error = fe_error_json(x, ERRCODE_EXTERNAL_ROUTINE_EXCEPTION,
										  psprintf("%s step %d failed in state \"%s\" of flow \"%s\"",
												   act->executor_name, a->step,
												   x->flow->states[x->state].name, x->flow->name),
										  psprintf("%s", a->error), NULL, act->executor_name, NULL);

		FeCatalogFinishStep(&x->row.id, a->step, "failed", NULL, error);
		x->index++;
		fe_action_failed(x, error);
	}
	else
	{
		FeCatalogFinishStep(&x->row.id, a->step, "completed", a->output, NULL);
		if (act->output && !FeExprAssignJson(act->output, a->output ? a->output : "null", &err))
			ereport(ERROR,
					(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
					 errmsg("could not store the result of step %d in variable \"%s\"",
							a->step, act->output),
					 errdetail("%s.", err)));
		x->index++;
	}
	x->row.status = "running";
	fe_run(x);
}

/*
 * A pending asynchronous step finished: resume the run.  With attempts >= 0
 * (the worker), a step that is no longer the claimed attempt (cancelled,
 * completed elsewhere, re-claimed) is left alone and *stale is set;
 * otherwise that is an error.
 */
static FeRunResult *
fe_step_complete(pg_uuid_t *id, int step, int attempts, char *output, const char *error,
				 bool *stale)
{
	FeRunRow	row;
	FeExec		x;
	FeCompleteArg a;
	char	   *executor = NULL;
	int			pending;

	fe_lock(id, &row);
	if (attempts >= 0 && fe_status_finished(row.status))
	{
		*stale = true;
		return NULL;
	}
	if (fe_status_finished(row.status))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("cannot complete step %d of flow run %s", step, fe_run_label(id)),
				 errdetail("The run of flow \"%s\" is already %s.", row.flow, row.status)));
	fe_exec_init(&x, FeFlowLoad(row.flow, row.version, false), &row, false);
	pending = row.cursor ? fe_cursor_restore(&x) : 0;
	if (pending != step || !FeCatalogStepPending(id, step, attempts, &executor))
	{
		if (attempts >= 0)
		{
			*stale = true;
			return NULL;
		}
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("step %d of flow run %s is not pending", step, fe_run_label(id)),
				 pending > 0 ? errdetail("The run is waiting for step %d.", pending)
				 : errdetail("The run has no pending step; it is %s.", row.status)));
	}
	a.step = step;
	a.output = output;
	a.error = error;
	return fe_call(&x, fe_body_complete, &a);
}

/* flow_step_complete */
FeRunResult *
FeEngineStepComplete(pg_uuid_t *id, int step, Jsonb *output, const char *error)
{
	bool		stale = false;

	return fe_step_complete(id, step, -1, output ? FeJsonbToText(output) : NULL, error, &stale);
}

/*
 * The worker's result for the attempt it claimed; false if it is stale.
 * The output is JSON text the worker has already checked.
 */
bool
FeEngineStepCompleteClaimed(pg_uuid_t *id, int step, int attempts, const char *output,
							const char *error)
{
	bool		stale = false;

	(void) fe_step_complete(id, step, attempts, output ? pstrdup(output) : NULL, error, &stale);
	return !stale;
}

typedef struct FeTimerArg
{
	const char *payload;
} FeTimerArg;

static void
fe_body_timer(FeExec *x, void *arg)
{
	FeState    *st = &x->flow->states[x->state];

	x->row.timeout_at = 0;
	if (FeStateTransition(st, "timeout"))
	{
		fe_deliver(x, "timeout", ((FeTimerArg *) arg)->payload, 0);
		x->next_source = "timer";
		fe_run(x);
		return;
	}
	fe_fail_run(x, fe_error_json(x, ERRCODE_QUERY_CANCELED,
								 psprintf("state \"%s\" of flow \"%s\" timed out after %d ms",
										  st->name, x->flow->name, st->timeout_ms),
								 "The state has no \"timeout\" transition.",
								 "Add a \"timeout\" transition to the state.", NULL, NULL));
}

/*
 * The worker found the timer of run `id` due: deliver "timeout" if the run
 * still waits with that timer.  Returns false if there was nothing to do.
 */
bool
FeEngineFireTimer(pg_uuid_t *id)
{
	FeRunRow	row;
	FeExec		x;
	FeTimerArg	a;
	FeState    *st;

	if (!FeCatalogLockRun(id, &row) || strcmp(row.status, "waiting") != 0 ||
		row.timeout_at == 0 || row.timeout_at > GetCurrentTimestamp())
		return false;
	fe_exec_init(&x, FeFlowLoad(row.flow, row.version, false), &row, false);
	st = &x.flow->states[x.state];
	a.payload = psprintf("{\"state\": %s, \"timeout_ms\": %d}", FeJsonQuote(st->name),
						 st->timeout_ms);
	(void) fe_call(&x, fe_body_timer, &a);
	return true;
}
