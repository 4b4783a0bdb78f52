/*-------------------------------------------------------------------------
 *
 * sql_api.c
 *	  Thin PG_FUNCTION_INFO_V1 wrappers: argument checks and result tuples.
 *	  The work happens in definition.c and engine.c.
 *
 * Transactions and locks: each function runs in the caller's transaction
 * and takes the locks described in engine.c and catalog.c.
 *
 *-------------------------------------------------------------------------
 */
#include "flow_engine.h"

#include "access/htup_details.h"
#include "fmgr.h"
#include "funcapi.h"
#include "lib/stringinfo.h"
#include "utils/builtins.h"
#include "utils/tuplestore.h"

PG_FUNCTION_INFO_V1(flow_validate);
PG_FUNCTION_INFO_V1(flow_define);
PG_FUNCTION_INFO_V1(flow_execute);
PG_FUNCTION_INFO_V1(flow_send);
PG_FUNCTION_INFO_V1(flow_cancel);
PG_FUNCTION_INFO_V1(flow_step_complete);

static void
fe_require(FunctionCallInfo fcinfo, int arg, const char *name)
{
	if (PG_ARGISNULL(arg))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("argument \"%s\" must not be null", name)));
}

/* flow_validate(definition jsonb) -> setof (path, severity, message) */
Datum
flow_validate(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	Jsonb	   *def = PG_GETARG_JSONB_P(0);
	List	   *problems = NIL;
	ListCell   *lc;

	InitMaterializedSRF(fcinfo, 0);
	(void) FeDefinitionParse(def, &problems);
	foreach(lc, problems)
	{
		FeProblem  *p = (FeProblem *) lfirst(lc);
		Datum		values[3];
		bool		nulls[3] = {false, false, false};

		values[0] = CStringGetTextDatum(p->path);
		values[1] = CStringGetTextDatum(p->severity);
		values[2] = CStringGetTextDatum(p->message);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}

static char *
fe_problem_lines(List *problems, const char *severity)
{
	StringInfoData b;
	ListCell   *lc;

	initStringInfo(&b);
	foreach(lc, problems)
	{
		FeProblem  *p = (FeProblem *) lfirst(lc);

		if (strcmp(p->severity, severity) != 0)
			continue;
		appendStringInfo(&b, "%s%s: %s", b.len ? "\n" : "", p->path, p->message);
	}
	return b.data;
}

/* flow_define(definition jsonb) -> (name, version) */
Datum
flow_define(PG_FUNCTION_ARGS)
{
	Jsonb	   *def = PG_GETARG_JSONB_P(0);
	List	   *problems = NIL;
	FeFlow	   *flow = FeDefinitionParse(def, &problems);
	TupleDesc	tupdesc;
	Datum		values[2];
	bool		nulls[2] = {false, false};
	int			version;

	if (flow == NULL || FeProblemsHaveErrors(problems))
	{
		int			n = 0;
		ListCell   *lc;

		foreach(lc, problems)
			if (strcmp(((FeProblem *) lfirst(lc))->severity, "error") == 0)
				n++;
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("definition of flow \"%s\" is not valid",
						flow && flow->name ? flow->name : "(no id)"),
				 errdetail_plural("%d problem:\n%s", "%d problems:\n%s", n, n,
								  fe_problem_lines(problems, "error")),
				 errhint("flow_validate() returns one row per problem, with its JSON path.")));
	}
	if (problems != NIL)
		ereport(WARNING,
				(errmsg("definition of flow \"%s\" has warnings", flow->name),
				 errdetail("%s", fe_problem_lines(problems, "warning"))));

	version = FeCatalogStoreDefinition(flow->name, def);
	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	values[0] = CStringGetTextDatum(flow->name);
	values[1] = Int32GetDatum(version);
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(BlessTupleDesc(tupdesc), values, nulls)));
}

static Datum
fe_run_datum(FunctionCallInfo fcinfo, FeRunResult *r)
{
	TupleDesc	tupdesc;
	Datum		values[8];
	bool		nulls[8] = {0};

	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	values[0] = UUIDPGetDatum(&r->id);
	values[1] = CStringGetTextDatum(r->flow);
	values[2] = Int32GetDatum(r->version);
	values[3] = CStringGetTextDatum(r->status);
	values[4] = CStringGetTextDatum(r->state);
	values[5] = JsonbPGetDatum(r->context);
	if (r->response)
		values[6] = CStringGetTextDatum(r->response);
	else
		nulls[6] = true;
	if (r->error)
		values[7] = DirectFunctionCall1(jsonb_in, CStringGetDatum(r->error));
	else
		nulls[7] = true;
	return HeapTupleGetDatum(heap_form_tuple(BlessTupleDesc(tupdesc), values, nulls));
}

static Jsonb *
fe_empty_object(void)
{
	return DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum("{}")));
}

/* flow_execute(flow text, input jsonb, key text, session text) -> flow_run_result */
Datum
flow_execute(PG_FUNCTION_ARGS)
{
	char	   *flow;
	Jsonb	   *input;
	char	   *key = NULL;
	char	   *session = NULL;

	fe_require(fcinfo, 0, "flow");
	flow = text_to_cstring(PG_GETARG_TEXT_PP(0));
	input = PG_ARGISNULL(1) ? fe_empty_object() : PG_GETARG_JSONB_P(1);
	if (!PG_ARGISNULL(2))
		key = text_to_cstring(PG_GETARG_TEXT_PP(2));
	if (PG_NARGS() > 3 && !PG_ARGISNULL(3))
		session = text_to_cstring(PG_GETARG_TEXT_PP(3));
	PG_RETURN_DATUM(fe_run_datum(fcinfo, FeEngineExecute(flow, input, key, session)));
}

PG_FUNCTION_INFO_V1(flow_message);

/* flow_message(run uuid, role text, content text, payload jsonb) -> integer */
Datum
flow_message(PG_FUNCTION_ARGS)
{
	fe_require(fcinfo, 0, "run");
	fe_require(fcinfo, 1, "role");
	fe_require(fcinfo, 2, "content");
	PG_RETURN_INT32(FeEngineMessage(PG_GETARG_UUID_P(0),
									text_to_cstring(PG_GETARG_TEXT_PP(1)),
									text_to_cstring(PG_GETARG_TEXT_PP(2)),
									PG_ARGISNULL(3) ? NULL : PG_GETARG_JSONB_P(3)));
}

PG_FUNCTION_INFO_V1(flow_wait_status);

/* flow_wait_status(run uuid, timeout_ms integer) -> text */
Datum
flow_wait_status(PG_FUNCTION_ARGS)
{
	fe_require(fcinfo, 0, "run");
	PG_RETURN_TEXT_P(cstring_to_text(FeWaitRun(PG_GETARG_UUID_P(0),
											   PG_ARGISNULL(1) ? 30000 : PG_GETARG_INT32(1))));
}

/* flow_send(run uuid, event text, payload jsonb) -> flow_run_result */
Datum
flow_send(PG_FUNCTION_ARGS)
{
	Jsonb	   *payload;

	fe_require(fcinfo, 0, "run");
	fe_require(fcinfo, 1, "event");
	payload = PG_ARGISNULL(2) ? fe_empty_object() : PG_GETARG_JSONB_P(2);
	PG_RETURN_DATUM(fe_run_datum(fcinfo,
								 FeEngineSend(PG_GETARG_UUID_P(0),
											  text_to_cstring(PG_GETARG_TEXT_PP(1)),
											  payload)));
}

/* flow_cancel(run uuid) -> flow_run_result */
Datum
flow_cancel(PG_FUNCTION_ARGS)
{
	PG_RETURN_DATUM(fe_run_datum(fcinfo, FeEngineCancel(PG_GETARG_UUID_P(0))));
}

/* flow_step_complete(run uuid, step int, output jsonb, error text) */
Datum
flow_step_complete(PG_FUNCTION_ARGS)
{
	fe_require(fcinfo, 0, "run");
	fe_require(fcinfo, 1, "step");
	PG_RETURN_DATUM(fe_run_datum(fcinfo,
								 FeEngineStepComplete(PG_GETARG_UUID_P(0),
													  PG_GETARG_INT32(1),
													  PG_ARGISNULL(2) ? NULL : PG_GETARG_JSONB_P(2),
													  PG_ARGISNULL(3) ? NULL :
													  text_to_cstring(PG_GETARG_TEXT_PP(3)))));
}

PG_FUNCTION_INFO_V1(flow_worker_wake);

/* flow_worker_wake(): wake the worker when this transaction commits. */
Datum
flow_worker_wake(PG_FUNCTION_ARGS)
{
	FeWorkerWakeAtCommit();
	PG_RETURN_VOID();
}
