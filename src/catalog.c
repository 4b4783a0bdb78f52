/*-------------------------------------------------------------------------
 *
 * catalog.c
 *	  Every SPI access to flow_engine's tables, and calls of sql-executor
 *	  functions.
 *
 * Transactions and locks:
 *	  - everything runs in the caller's transaction; nothing here commits;
 *	  - a run is locked with SELECT ... FOR UPDATE on its flow_runs row
 *		before it is advanced, so concurrent deliveries to one run
 *		serialise and none is lost;
 *	  - concurrent flow_define calls for one name serialise on the
 *		flow_names row (INSERT ... ON CONFLICT DO UPDATE);
 *	  - every statement is keyed by run id (or flow name), with no
 *		cross-run joins, so runs can be distributed by run id;
 *	  - rows produced by one engine call are written in one multi-row
 *		INSERT per table (unnest of arrays), not one statement per step.
 *
 * Plans are prepared once per backend (SPI_keepplan); the plan cache
 * replans them after DDL.  Each function opens and closes its own SPI
 * connection and copies results into the caller's memory context.
 *
 * Calls of user functions (sql executor) run in a subtransaction, as
 * PL/pgSQL exception blocks do, so a failing function becomes a failed
 * step instead of aborting the caller's transaction.
 *
 *-------------------------------------------------------------------------
 */
#include "flow_engine.h"

#include "access/htup_details.h"
#include "catalog/pg_proc.h"
#include "catalog/pg_type.h"
#include "commands/extension.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/resowner.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"

/* ---------------------------------------------------------------------
 * Plans
 * ---------------------------------------------------------------------
 */
static char *fe_schema = NULL;
static char *fe_col_str(MemoryContext mcxt, int col);

/* The extension's schema, quoted; looked up once per backend. */
static const char *
fe_ext_schema(void)
{
	if (fe_schema == NULL)
	{
		int			rc;

		rc = SPI_execute("SELECT quote_ident(n.nspname) FROM pg_catalog.pg_extension e "
						 "JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace "
						 "WHERE e.extname = 'flow_engine'", true, 1);
		if (rc != SPI_OK_SELECT)
			elog(ERROR, "could not look up the flow_engine schema: %s",
				 SPI_result_code_string(rc));
		if (SPI_processed == 0)
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("extension \"flow_engine\" is not installed in this database"),
					 errhint("Run CREATE EXTENSION flow_engine.")));
		fe_schema = fe_col_str(TopMemoryContext, 1);
	}
	return fe_schema;
}

static SPIPlanPtr
fe_plan(SPIPlanPtr *slot, const char *fmt, int nargs, Oid *types)
{
	if (*slot == NULL)
	{
		char	   *sql = psprintf(fmt, fe_ext_schema());
		SPIPlanPtr	plan = SPI_prepare(sql, nargs, types);

		if (plan == NULL)
			elog(ERROR, "SPI_prepare failed for \"%s\": %s", sql,
				 SPI_result_code_string(SPI_result));
		if (SPI_keepplan(plan) != 0)
			elog(ERROR, "SPI_keepplan failed");
		*slot = plan;
	}
	return *slot;
}

static void
fe_connect(void)
{
	int			rc = SPI_connect();

	if (rc != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed: %s", SPI_result_code_string(rc));
}

static void
fe_finish(void)
{
	int			rc = SPI_finish();

	if (rc != SPI_OK_FINISH)
		elog(ERROR, "SPI_finish failed: %s", SPI_result_code_string(rc));
}

static void
fe_exec(SPIPlanPtr plan, Datum *values, const char *nulls, int expect, long count)
{
	int			rc = SPI_execute_plan(plan, values, nulls, false, count);

	if (rc != expect)
		elog(ERROR, "flow_engine catalog statement failed: %s", SPI_result_code_string(rc));
}

static Datum
fe_text(const char *s)
{
	return CStringGetTextDatum(s);
}

static Datum
fe_uuid(pg_uuid_t *id)
{
	return UUIDPGetDatum(id);
}

/* Column `col` of the first result row as a string in context mcxt. */
static char *
fe_col_str(MemoryContext mcxt, int col)
{
	char	   *v = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, col);

	return v ? MemoryContextStrdup(mcxt, v) : NULL;
}

static int
fe_col_int(int col)
{
	bool		isnull;
	Datum		d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, col, &isnull);

	return isnull ? 0 : DatumGetInt32(d);
}

/* A one-dimensional array of n values of a built-in type. */
static Datum
fe_array(Datum *values, bool *nulls, int n, Oid type)
{
	int			dims[1];
	int			lbs[1] = {1};
	int16		typlen;
	bool		typbyval;
	char		typalign;

	dims[0] = n;
	get_typlenbyvalalign(type, &typlen, &typbyval, &typalign);
	return PointerGetDatum(construct_md_array(values, nulls, 1, dims, lbs, type,
											  typlen, typbyval, typalign));
}

/* Column builder for multi-row inserts. */
typedef struct FeColumn
{
	Oid			type;
	Datum	   *values;
	bool	   *nulls;
} FeColumn;

static void
fe_col_init(FeColumn *c, Oid type, int n)
{
	c->type = type;
	c->values = palloc0(sizeof(Datum) * (n + 1));
	c->nulls = palloc0(sizeof(bool) * (n + 1));
}

static void
fe_col_text(FeColumn *c, int i, const char *s)
{
	if (s == NULL)
		c->nulls[i] = true;
	else
		c->values[i] = fe_text(s);
}

/*
 * INSERT ... SELECT $1, ... FROM unnest($2, ...): run `sql` with the run id
 * and one array per column, each of n values.
 */
static void
fe_insert_batch(SPIPlanPtr *slot, const char *sql, pg_uuid_t *run,
				FeColumn *cols, int ncols, int n)
{
	Oid		   *types = palloc(sizeof(Oid) * (ncols + 1));
	Datum	   *values = palloc(sizeof(Datum) * (ncols + 1));
	int			c;

	types[0] = UUIDOID;
	values[0] = fe_uuid(run);
	for (c = 0; c < ncols; c++)
	{
		types[c + 1] = get_array_type(cols[c].type);
		values[c + 1] = fe_array(cols[c].values, cols[c].nulls, n, cols[c].type);
	}
	fe_connect();
	fe_exec(fe_plan(slot, sql, ncols + 1, types), values, NULL, SPI_OK_INSERT, 0);
	fe_finish();
}

/* ---------------------------------------------------------------------
 * Definitions
 * ---------------------------------------------------------------------
 */
static SPIPlanPtr plan_def_latest = NULL;
static SPIPlanPtr plan_def_exact = NULL;
static SPIPlanPtr plan_def_body = NULL;
static SPIPlanPtr plan_name_bump = NULL;
static SPIPlanPtr plan_def_insert = NULL;

/*
 * Find a definition: the latest version of `name`, or exactly `version`.
 * Sets *found_version and *xmin; if def is given, also the definition.
 */
bool
FeCatalogFetchDefinition(const char *name, int version, bool latest,
						 int *found_version, uint64 *xmin, Jsonb **def)
{
	MemoryContext caller = CurrentMemoryContext;
	Oid			types[2] = {TEXTOID, INT4OID};
	Datum		values[2];
	bool		found;

	values[0] = fe_text(name);
	values[1] = Int32GetDatum(version);
	fe_connect();
	if (latest)
		fe_exec(fe_plan(&plan_def_latest,
						"SELECT version, xmin::text FROM %1$s.flow_definitions "
						"WHERE name = $1 ORDER BY version DESC LIMIT 1", 1, types),
				values, NULL, SPI_OK_SELECT, 1);
	else
		fe_exec(fe_plan(&plan_def_exact,
						"SELECT version, xmin::text FROM %1$s.flow_definitions "
						"WHERE name = $1 AND version = $2", 2, types),
				values, NULL, SPI_OK_SELECT, 1);
	found = SPI_processed > 0;
	if (found)
	{
		char	   *x = fe_col_str(caller, 2);

		*found_version = fe_col_int(1);
		*xmin = strtoull(x, NULL, 10);
		if (def)
		{
			bool		isnull;
			Datum		d;
			MemoryContext old;

			values[1] = Int32GetDatum(*found_version);
			fe_exec(fe_plan(&plan_def_body,
							"SELECT definition FROM %1$s.flow_definitions "
							"WHERE name = $1 AND version = $2", 2, types),
					values, NULL, SPI_OK_SELECT, 1);
			d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
			old = MemoryContextSwitchTo(caller);
			*def = DatumGetJsonbPCopy(d);
			MemoryContextSwitchTo(old);
		}
	}
	fe_finish();
	return found;
}

/* Store def as the next version of `name`; returns that version. */
int
FeCatalogStoreDefinition(const char *name, Jsonb *def)
{
	Oid			types[3] = {TEXTOID, INT4OID, JSONBOID};
	Datum		values[3];
	int			version;

	values[0] = fe_text(name);
	fe_connect();
	fe_exec(fe_plan(&plan_name_bump,
					"INSERT INTO %1$s.flow_names AS n (name, latest_version) VALUES ($1, 1) "
					"ON CONFLICT (name) DO UPDATE "
					"SET latest_version = n.latest_version + 1, updated_at = now() "
					"RETURNING latest_version", 1, types),
			values, NULL, SPI_OK_INSERT_RETURNING, 0);
	version = fe_col_int(1);
	values[1] = Int32GetDatum(version);
	values[2] = JsonbPGetDatum(def);
	fe_exec(fe_plan(&plan_def_insert,
					"INSERT INTO %1$s.flow_definitions (name, version, definition) "
					"VALUES ($1, $2, $3)", 3, types),
			values, NULL, SPI_OK_INSERT, 0);
	fe_finish();
	return version;
}

/* ---------------------------------------------------------------------
 * Runs
 * ---------------------------------------------------------------------
 */
static SPIPlanPtr plan_run_lock = NULL;
static SPIPlanPtr plan_run_insert = NULL;
static SPIPlanPtr plan_run_update = NULL;

/* Lock run `id` and read it into *row; false if there is no such run. */
bool
FeCatalogLockRun(pg_uuid_t *id, FeRunRow *row)
{
	MemoryContext caller = CurrentMemoryContext;
	Oid			types[1] = {UUIDOID};
	Datum		values[1];
	bool		found;

	values[0] = fe_uuid(id);
	fe_connect();
	fe_exec(fe_plan(&plan_run_lock,
					"SELECT flow, version, status, state, context::text, response, key, "
					"error::text, cursor::text, step_seq, event_seq, message_seq, queued_events "
					"FROM %1$s.flow_runs WHERE id = $1 FOR UPDATE", 1, types),
			values, NULL, SPI_OK_SELECT, 1);
	found = SPI_processed > 0;
	if (found)
	{
		memset(row, 0, sizeof(FeRunRow));
		memcpy(&row->id, id, sizeof(pg_uuid_t));
		row->flow = fe_col_str(caller, 1);
		row->version = fe_col_int(2);
		row->status = fe_col_str(caller, 3);
		row->state = fe_col_str(caller, 4);
		row->context = fe_col_str(caller, 5);
		row->response = fe_col_str(caller, 6);
		row->key = fe_col_str(caller, 7);
		row->error = fe_col_str(caller, 8);
		row->cursor = fe_col_str(caller, 9);
		row->step_seq = fe_col_int(10);
		row->event_seq = fe_col_int(11);
		row->message_seq = fe_col_int(12);
		row->queued_events = fe_col_int(13);
	}
	fe_finish();
	return found;
}

/*
 * Insert or update the run row.  The context travels as JSON text and is
 * parsed once here; *context_out receives the parsed value.
 */
void
FeCatalogSaveRun(FeRunRow *row, bool insert, bool finished, Jsonb **context_out)
{
	Oid			types[15] = {UUIDOID, TEXTOID, INT4OID, TEXTOID, TEXTOID, JSONBOID,
		TEXTOID, TEXTOID, TEXTOID, TEXTOID, INT4OID, INT4OID, INT4OID, INT4OID, BOOLOID};
	Datum		values[15];
	char		nulls[16] = "               ";
	Jsonb	   *context;

	context = DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(row->context)));
	values[0] = fe_uuid(&row->id);
	values[1] = fe_text(row->flow);
	values[2] = Int32GetDatum(row->version);
	values[3] = fe_text(row->status);
	values[4] = fe_text(row->state);
	values[5] = JsonbPGetDatum(context);
	values[6] = row->response ? fe_text(row->response) : (nulls[6] = 'n', (Datum) 0);
	values[7] = row->key ? fe_text(row->key) : (nulls[7] = 'n', (Datum) 0);
	values[8] = row->error ? fe_text(row->error) : (nulls[8] = 'n', (Datum) 0);
	values[9] = row->cursor ? fe_text(row->cursor) : (nulls[9] = 'n', (Datum) 0);
	values[10] = Int32GetDatum(row->step_seq);
	values[11] = Int32GetDatum(row->event_seq);
	values[12] = Int32GetDatum(row->message_seq);
	values[13] = Int32GetDatum(row->queued_events);
	values[14] = BoolGetDatum(finished);

	fe_connect();
	if (insert)
		fe_exec(fe_plan(&plan_run_insert,
						"INSERT INTO %1$s.flow_runs (id, flow, version, status, state, context, "
						"response, key, error, cursor, step_seq, event_seq, message_seq, "
						"queued_events, finished_at) "
						"VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9::jsonb, $10::jsonb, $11, $12, "
						"$13, $14, CASE WHEN $15 THEN clock_timestamp() END)", 15, types),
				values, nulls, SPI_OK_INSERT, 0);
	else
		fe_exec(fe_plan(&plan_run_update,
						"UPDATE %1$s.flow_runs SET status = $4, state = $5, context = $6, "
						"response = $7, error = $9::jsonb, cursor = $10::jsonb, step_seq = $11, "
						"event_seq = $12, message_seq = $13, queued_events = $14, "
						"updated_at = clock_timestamp(), "
						"finished_at = CASE WHEN $15 THEN clock_timestamp() END "
						"WHERE id = $1",
						15, types),
				values, nulls, SPI_OK_UPDATE, 0);
	fe_finish();
	if (context_out)
		*context_out = context;
}

/* ---------------------------------------------------------------------
 * Steps, events and messages: one multi-row INSERT per table per call
 * ---------------------------------------------------------------------
 */
static SPIPlanPtr plan_steps_insert = NULL;
static SPIPlanPtr plan_events_insert = NULL;
static SPIPlanPtr plan_messages_insert = NULL;

void
FeCatalogInsertSteps(pg_uuid_t *run, List *steps)
{
	int			n = list_length(steps);
	FeColumn	cols[11];
	Oid			ctypes[11] = {INT4OID, TEXTOID, TEXTOID, INT4OID, TEXTOID, TEXTOID,
		TEXTOID, TEXTOID, TEXTOID, TIMESTAMPTZOID, TIMESTAMPTZOID};
	ListCell   *lc;
	int			i,
				c;

	if (n == 0)
		return;
	for (c = 0; c < 11; c++)
		fe_col_init(&cols[c], ctypes[c], n);
	i = 0;
	foreach(lc, steps)
	{
		FeStepRow  *s = (FeStepRow *) lfirst(lc);

		cols[0].values[i] = Int32GetDatum(s->seq);
		fe_col_text(&cols[1], i, s->state);
		fe_col_text(&cols[2], i, s->phase);
		cols[3].values[i] = Int32GetDatum(s->action);
		fe_col_text(&cols[4], i, s->executor);
		fe_col_text(&cols[5], i, s->status);
		fe_col_text(&cols[6], i, s->input);
		fe_col_text(&cols[7], i, s->output);
		fe_col_text(&cols[8], i, s->error);
		cols[9].values[i] = TimestampTzGetDatum(s->started_at);
		if (s->finished_at == 0)
			cols[10].nulls[i] = true;
		else
			cols[10].values[i] = TimestampTzGetDatum(s->finished_at);
		i++;
	}
	fe_insert_batch(&plan_steps_insert,
					"INSERT INTO %1$s.flow_run_steps (run_id, seq, state, phase, action, executor, "
					"status, input, output, error, attempts, started_at, finished_at, due_at) "
					"SELECT $1, s.seq, s.state, s.phase, s.action, s.executor, s.status, "
					"s.input::jsonb, s.output::jsonb, s.error::jsonb, "
					"CASE WHEN s.status = 'pending' THEN 0 ELSE 1 END, "
					"s.started_at, s.finished_at, "
					"CASE WHEN s.status = 'pending' THEN s.started_at END "
					"FROM unnest($2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) "
					"AS s(seq, state, phase, action, executor, status, input, output, error, "
					"started_at, finished_at)",
					run, cols, 11, n);
}

void
FeCatalogInsertEvents(pg_uuid_t *run, List *events)
{
	int			n = list_length(events);
	FeColumn	cols[7];
	Oid			ctypes[7] = {INT4OID, TEXTOID, TEXTOID, TEXTOID, TEXTOID, TEXTOID, TEXTOID};
	ListCell   *lc;
	int			i,
				c;

	if (n == 0)
		return;
	for (c = 0; c < 7; c++)
		fe_col_init(&cols[c], ctypes[c], n);
	i = 0;
	foreach(lc, events)
	{
		FeEventRow *e = (FeEventRow *) lfirst(lc);

		cols[0].values[i] = Int32GetDatum(e->seq);
		fe_col_text(&cols[1], i, e->event);
		fe_col_text(&cols[2], i, e->source);
		fe_col_text(&cols[3], i, e->payload);
		fe_col_text(&cols[4], i, e->status);
		fe_col_text(&cols[5], i, e->from_state);
		fe_col_text(&cols[6], i, e->to_state);
		i++;
	}
	fe_insert_batch(&plan_events_insert,
					"INSERT INTO %1$s.flow_events (run_id, seq, event, source, payload, status, "
					"from_state, to_state, consumed_at) "
					"SELECT $1, e.seq, e.event, e.source, e.payload::jsonb, e.status, "
					"e.from_state, e.to_state, "
					"CASE WHEN e.status = 'consumed' THEN clock_timestamp() END "
					"FROM unnest($2, $3, $4, $5, $6, $7, $8) "
					"AS e(seq, event, source, payload, status, from_state, to_state)",
					run, cols, 7, n);
}

void
FeCatalogInsertMessages(pg_uuid_t *run, List *messages)
{
	int			n = list_length(messages);
	FeColumn	cols[3];
	Oid			ctypes[3] = {INT4OID, TEXTOID, TEXTOID};
	ListCell   *lc;
	int			i,
				c;

	if (n == 0)
		return;
	for (c = 0; c < 3; c++)
		fe_col_init(&cols[c], ctypes[c], n);
	i = 0;
	foreach(lc, messages)
	{
		FeMessageRow *m = (FeMessageRow *) lfirst(lc);

		cols[0].values[i] = Int32GetDatum(m->seq);
		fe_col_text(&cols[1], i, m->role);
		fe_col_text(&cols[2], i, m->content);
		i++;
	}
	fe_insert_batch(&plan_messages_insert,
					"INSERT INTO %1$s.flow_messages (run_id, seq, role, content) "
					"SELECT $1, m.seq, m.role, m.content FROM unnest($2, $3, $4) "
					"AS m(seq, role, content)",
					run, cols, 3, n);
}

/* ---------------------------------------------------------------------
 * Pending steps and the inbox
 * ---------------------------------------------------------------------
 */
static SPIPlanPtr plan_step_lock = NULL;
static SPIPlanPtr plan_step_finish = NULL;
static SPIPlanPtr plan_cancel_steps = NULL;
static SPIPlanPtr plan_cancel_events = NULL;
static SPIPlanPtr plan_next_event = NULL;
static SPIPlanPtr plan_consume_event = NULL;

/* Is step `seq` of `run` still pending (or in flight)?  Locks it. */
bool
FeCatalogStepPending(pg_uuid_t *run, int seq, char **executor)
{
	MemoryContext caller = CurrentMemoryContext;
	Oid			types[2] = {UUIDOID, INT4OID};
	Datum		values[2];
	bool		pending = false;

	values[0] = fe_uuid(run);
	values[1] = Int32GetDatum(seq);
	fe_connect();
	fe_exec(fe_plan(&plan_step_lock,
					"SELECT executor, status FROM %1$s.flow_run_steps "
					"WHERE run_id = $1 AND seq = $2 FOR UPDATE", 2, types),
			values, NULL, SPI_OK_SELECT, 1);
	if (SPI_processed > 0)
	{
		char	   *status = fe_col_str(caller, 2);

		*executor = fe_col_str(caller, 1);
		pending = strcmp(status, "pending") == 0 || strcmp(status, "running") == 0;
	}
	fe_finish();
	return pending;
}

void
FeCatalogFinishStep(pg_uuid_t *run, int seq, const char *status,
					const char *output, const char *error)
{
	Oid			types[5] = {UUIDOID, INT4OID, TEXTOID, TEXTOID, TEXTOID};
	Datum		values[5];
	char		nulls[6] = "     ";

	values[0] = fe_uuid(run);
	values[1] = Int32GetDatum(seq);
	values[2] = fe_text(status);
	values[3] = output ? fe_text(output) : (nulls[3] = 'n', (Datum) 0);
	values[4] = error ? fe_text(error) : (nulls[4] = 'n', (Datum) 0);
	fe_connect();
	fe_exec(fe_plan(&plan_step_finish,
					"UPDATE %1$s.flow_run_steps SET status = $3, output = $4::jsonb, "
					"error = $5::jsonb, attempts = greatest(attempts, 1), "
					"started_at = coalesce(started_at, clock_timestamp()), "
					"finished_at = clock_timestamp(), due_at = NULL "
					"WHERE run_id = $1 AND seq = $2", 5, types),
			values, nulls, SPI_OK_UPDATE, 0);
	fe_finish();
}

/* Cancel a run's pending steps and reject its queued events. */
void
FeCatalogCancelPending(pg_uuid_t *run)
{
	Oid			types[1] = {UUIDOID};
	Datum		values[1];

	values[0] = fe_uuid(run);
	fe_connect();
	fe_exec(fe_plan(&plan_cancel_steps,
					"UPDATE %1$s.flow_run_steps SET status = 'cancelled', "
					"finished_at = clock_timestamp(), due_at = NULL "
					"WHERE run_id = $1 AND status IN ('pending', 'running')", 1, types),
			values, NULL, SPI_OK_UPDATE, 0);
	fe_exec(fe_plan(&plan_cancel_events,
					"UPDATE %1$s.flow_events SET status = 'rejected', "
					"consumed_at = clock_timestamp() "
					"WHERE run_id = $1 AND status = 'queued'", 1, types),
			values, NULL, SPI_OK_UPDATE, 0);
	fe_finish();
}

/* The oldest queued event of `run`, if any. */
bool
FeCatalogNextQueuedEvent(pg_uuid_t *run, int *seq, char **event, char **payload)
{
	MemoryContext caller = CurrentMemoryContext;
	Oid			types[1] = {UUIDOID};
	Datum		values[1];
	bool		found;

	values[0] = fe_uuid(run);
	fe_connect();
	fe_exec(fe_plan(&plan_next_event,
					"SELECT seq, event, payload::text FROM %1$s.flow_events "
					"WHERE run_id = $1 AND status = 'queued' ORDER BY seq LIMIT 1", 1, types),
			values, NULL, SPI_OK_SELECT, 1);
	found = SPI_processed > 0;
	if (found)
	{
		*seq = fe_col_int(1);
		*event = fe_col_str(caller, 2);
		*payload = fe_col_str(caller, 3);
	}
	fe_finish();
	return found;
}

void
FeCatalogConsumeEvent(pg_uuid_t *run, int seq, const char *status,
					  const char *from_state, const char *to_state)
{
	Oid			types[5] = {UUIDOID, INT4OID, TEXTOID, TEXTOID, TEXTOID};
	Datum		values[5];
	char		nulls[6] = "     ";

	values[0] = fe_uuid(run);
	values[1] = Int32GetDatum(seq);
	values[2] = fe_text(status);
	values[3] = from_state ? fe_text(from_state) : (nulls[3] = 'n', (Datum) 0);
	values[4] = to_state ? fe_text(to_state) : (nulls[4] = 'n', (Datum) 0);
	fe_connect();
	fe_exec(fe_plan(&plan_consume_event,
					"UPDATE %1$s.flow_events SET status = $3, from_state = $4, to_state = $5, "
					"consumed_at = clock_timestamp() WHERE run_id = $1 AND seq = $2", 5, types),
			values, nulls, SPI_OK_UPDATE, 0);
	fe_finish();
}

/* ---------------------------------------------------------------------
 * The sql executor
 * ---------------------------------------------------------------------
 */

/*
 * Run fn(arg) in a subtransaction.  Returns true on success; on failure
 * *error receives the error (copied into the caller's context), unless it
 * is a query cancel, which is re-thrown so statement_timeout still works.
 */
typedef Datum (*FeGuardedFn) (void *arg);

static bool
fe_guarded(FeGuardedFn fn, void *arg, Datum *result, ErrorData **error)
{
	MemoryContext caller = CurrentMemoryContext;
	ResourceOwner owner = CurrentResourceOwner;
	volatile bool ok = true;

	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(caller);
	PG_TRY();
	{
		*result = fn(arg);
		ReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(caller);
		CurrentResourceOwner = owner;
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(caller);
		edata = CopyErrorData();
		FlushErrorState();
		RollbackAndReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(caller);
		CurrentResourceOwner = owner;
		if (edata->sqlerrcode == ERRCODE_QUERY_CANCELED ||
			edata->sqlerrcode == ERRCODE_ADMIN_SHUTDOWN)
			ReThrowError(edata);
		*error = edata;
		ok = false;
	}
	PG_END_TRY();
	return ok;
}

typedef struct FeSqlCall
{
	const char *function;
	const char *args_json;
	MemoryContext result_cxt;
	bool		check_only;
} FeSqlCall;

/* Resolve and check the signature; raises on any problem. */
static Oid
fe_resolve_function(const char *function)
{
	Oid			fn = DatumGetObjectId(DirectFunctionCall1(regprocedurein,
														  CStringGetDatum(function)));
	HeapTuple	tup = SearchSysCache1(PROCOID, ObjectIdGetDatum(fn));
	Form_pg_proc proc;
	bool		ok;

	if (!HeapTupleIsValid(tup))
		elog(ERROR, "cache lookup failed for function %u", fn);
	proc = (Form_pg_proc) GETSTRUCT(tup);
	ok = proc->pronargs == 1 && proc->proargtypes.values[0] == JSONBOID &&
		proc->prorettype == JSONBOID && !proc->proretset && proc->prokind == PROKIND_FUNCTION;
	ReleaseSysCache(tup);
	if (!ok)
		ereport(ERROR,
				(errcode(ERRCODE_WRONG_OBJECT_TYPE),
				 errmsg("function %s must take one jsonb argument and return jsonb", function)));
	return fn;
}

static Datum
fe_sql_call(void *arg)
{
	FeSqlCall  *c = (FeSqlCall *) arg;
	Oid			fn = fe_resolve_function(c->function);
	AclResult	acl;
	Datum		args;
	Datum		result;
	LOCAL_FCINFO(fcinfo, 1);
	FmgrInfo	flinfo;
	MemoryContext old;

	if (c->check_only)
		return (Datum) 0;
	acl = pg_proc_aclcheck(fn, GetUserId(), ACL_EXECUTE);
	if (acl != ACLCHECK_OK)
		aclcheck_error(acl, OBJECT_FUNCTION, c->function);
	args = DirectFunctionCall1(jsonb_in, CStringGetDatum(c->args_json));
	fmgr_info(fn, &flinfo);
	InitFunctionCallInfoData(*fcinfo, &flinfo, 1, InvalidOid, NULL, NULL);
	fcinfo->args[0].value = args;
	fcinfo->args[0].isnull = false;
	result = FunctionCallInvoke(fcinfo);
	if (fcinfo->isnull)
		return (Datum) 0;
	old = MemoryContextSwitchTo(c->result_cxt);
	result = PointerGetDatum(DatumGetJsonbPCopy(result));
	MemoryContextSwitchTo(old);
	return result;
}

/*
 * Call `function` (regprocedure text, jsonb -> jsonb) with args.  Returns
 * the result (NULL for SQL NULL) or NULL with *error set.
 */
Jsonb *
FeCatalogCallSql(const char *function, const char *args_json, ErrorData **error)
{
	FeSqlCall	c = {0};
	Datum		result = (Datum) 0;

	c.function = function;
	c.args_json = args_json;
	c.result_cxt = CurrentMemoryContext;
	*error = NULL;
	if (!fe_guarded(fe_sql_call, &c, &result, error))
		return NULL;
	return (Jsonb *) DatumGetPointer(result);
}

/* Check that `function` names a jsonb -> jsonb function. */
int
FeCatalogCheckFunction(const char *function, char **why)
{
	FeSqlCall	c = {0};
	Datum		result;
	ErrorData  *error = NULL;

	c.function = function;
	c.check_only = true;
	if (fe_guarded(fe_sql_call, &c, &result, &error))
		return FE_FUNCTION_OK;
	if (error->sqlerrcode == ERRCODE_UNDEFINED_FUNCTION ||
		error->sqlerrcode == ERRCODE_UNDEFINED_SCHEMA)
	{
		*why = psprintf("Function %s does not exist yet; create it before a run reaches this action.",
						function);
		return FE_FUNCTION_MISSING;
	}
	*why = psprintf("Function \"%s\" is not usable: %s.", function, error->message);
	return FE_FUNCTION_BAD;
}
