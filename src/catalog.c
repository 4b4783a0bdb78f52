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

/*
 * The extension's schema, quoted, and its installed version; NULL schema
 * if it is not installed.  Needs an SPI connection.
 */
static char *
fe_ext_lookup(char **version)
{
	int			rc;

	rc = SPI_execute("SELECT quote_ident(n.nspname), e.extversion FROM pg_catalog.pg_extension e "
					 "JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace "
					 "WHERE e.extname = 'flow_engine'", true, 1);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "could not look up the flow_engine schema: %s",
			 SPI_result_code_string(rc));
	if (SPI_processed == 0)
		return NULL;
	*version = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2);
	return SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
}

/*
 * The extension's schema, quoted; looked up once per backend.  The
 * library only works with the schema of its own version: after a package
 * upgrade, ALTER EXTENSION UPDATE brings the schema up to date.
 */
static const char *
fe_ext_schema(void)
{
	if (fe_schema == NULL)
	{
		char	   *version = NULL;
		char	   *schema = fe_ext_lookup(&version);

		if (schema == NULL)
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("extension \"flow_engine\" is not installed in this database"),
					 errhint("Run CREATE EXTENSION flow_engine.")));
		if (strcmp(version, FE_VERSION) != 0)
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("extension \"flow_engine\" is at version %s, but its library is version %s",
							version, FE_VERSION),
					 errhint("Run ALTER EXTENSION flow_engine UPDATE.")));
		fe_schema = MemoryContextStrdup(TopMemoryContext, schema);
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
 * Run `sql`, whose parameters $1..$ncols are one array per column, each of
 * n values (INSERT ... SELECT ... FROM unnest(...), UPDATE ... FROM unnest).
 * Column 0 is always the run ids.
 */
static void
fe_exec_arrays(SPIPlanPtr *slot, const char *sql, FeColumn *cols, int ncols, int n,
			   int expect)
{
	Oid		   *types = palloc(sizeof(Oid) * ncols);
	Datum	   *values = palloc(sizeof(Datum) * ncols);
	int			c;

	for (c = 0; c < ncols; c++)
	{
		types[c] = get_array_type(cols[c].type);
		values[c] = fe_array(cols[c].values, cols[c].nulls, n, cols[c].type);
	}
	fe_connect();
	fe_exec(fe_plan(slot, sql, ncols, types), values, NULL, expect, 0);
	fe_finish();
}

/* ---------------------------------------------------------------------
 * Deferred writes
 *
 * In the worker's record transaction many runs are advanced one after the
 * other.  Their step, event, message and run-row writes are then buffered
 * and written per table in one set-based statement (FeCatalogDeferFlush)
 * instead of one statement per run.  Reads that could see the buffered
 * rows flush first: a user's sql function, and locking a run that has
 * buffered writes.  A failed subtransaction drops what it buffered
 * (FeCatalogDeferMark / FeCatalogDeferUndo).
 * ---------------------------------------------------------------------
 */
typedef struct FeFinishRow
{
	pg_uuid_t	run;
	int			seq;
	const char *status;
	const char *output;
	const char *error;
} FeFinishRow;

typedef struct FeSaveRow
{
	FeRunRow	row;
	bool		finished;
} FeSaveRow;

typedef struct FeDeferred
{
	bool		on;
	List	   *step_runs;		/* pg_uuid_t *, one per row of steps */
	List	   *steps;			/* FeStepRow * */
	List	   *event_runs;
	List	   *events;
	List	   *message_runs;
	List	   *messages;
	List	   *finishes;		/* FeFinishRow * */
	List	   *saves;			/* FeSaveRow * */
} FeDeferred;

static FeDeferred fe_defer;

static void fe_write_steps(List *runs, List *steps);
static void fe_write_events(List *runs, List *events);
static void fe_write_messages(List *runs, List *messages);
static void fe_write_finishes(List *finishes);
static void fe_write_saves(List *saves);

/* Buffer writes until FeCatalogDeferFlush (the current transaction only). */
void
FeCatalogDeferBegin(void)
{
	memset(&fe_defer, 0, sizeof(fe_defer));
	fe_defer.on = true;
}

/* Stop buffering (after a flush, or when the transaction was aborted). */
void
FeCatalogDeferEnd(void)
{
	memset(&fe_defer, 0, sizeof(fe_defer));
}

void
FeCatalogDeferMark(int *mark)
{
	mark[0] = list_length(fe_defer.steps);
	mark[1] = list_length(fe_defer.events);
	mark[2] = list_length(fe_defer.messages);
	mark[3] = list_length(fe_defer.finishes);
	mark[4] = list_length(fe_defer.saves);
}

void
FeCatalogDeferUndo(int *mark)
{
	fe_defer.step_runs = list_truncate(fe_defer.step_runs, mark[0]);
	fe_defer.steps = list_truncate(fe_defer.steps, mark[0]);
	fe_defer.event_runs = list_truncate(fe_defer.event_runs, mark[1]);
	fe_defer.events = list_truncate(fe_defer.events, mark[1]);
	fe_defer.message_runs = list_truncate(fe_defer.message_runs, mark[2]);
	fe_defer.messages = list_truncate(fe_defer.messages, mark[2]);
	fe_defer.finishes = list_truncate(fe_defer.finishes, mark[3]);
	fe_defer.saves = list_truncate(fe_defer.saves, mark[4]);
}

/* Write everything buffered; buffering goes on afterwards. */
void
FeCatalogDeferFlush(void)
{
	FeDeferred	d = fe_defer;

	if (!d.on)
		return;
	fe_defer.on = false;		/* the writers below write directly */
	fe_write_saves(d.saves);
	fe_write_finishes(d.finishes);
	fe_write_steps(d.step_runs, d.steps);
	fe_write_events(d.event_runs, d.events);
	fe_write_messages(d.message_runs, d.messages);
	FeCatalogDeferBegin();
}

static pg_uuid_t *
fe_run_copy(pg_uuid_t *run)
{
	pg_uuid_t  *c = MemoryContextAlloc(TopTransactionContext, sizeof(pg_uuid_t));

	memcpy(c, run, sizeof(pg_uuid_t));
	return c;
}

/* Append the rows of one run to a buffered table, in TopTransactionContext. */
static void
fe_defer_rows(List **runs, List **rows, pg_uuid_t *run, List *add)
{
	MemoryContext old = MemoryContextSwitchTo(TopTransactionContext);
	pg_uuid_t  *r = fe_run_copy(run);
	ListCell   *lc;

	foreach(lc, add)
	{
		*runs = lappend(*runs, r);
		*rows = lappend(*rows, lfirst(lc));
	}
	MemoryContextSwitchTo(old);
}

/* Does `run` have buffered writes?  (Then reading it needs a flush.) */
static bool
fe_deferred_run(pg_uuid_t *run)
{
	ListCell   *lc;

	foreach(lc, fe_defer.saves)
		if (memcmp(&((FeSaveRow *) lfirst(lc))->row.id, run, sizeof(pg_uuid_t)) == 0)
			return true;
	return false;
}

static void
fe_col_runs(FeColumn *c, List *runs, pg_uuid_t *one, int n)
{
	int			i;

	fe_col_init(c, UUIDOID, n);
	for (i = 0; i < n; i++)
		c->values[i] = fe_uuid(runs ? (pg_uuid_t *) list_nth(runs, i) : one);
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
 * Tools
 * ---------------------------------------------------------------------
 */
static SPIPlanPtr plan_tool = NULL;

/* Read tool `name` from flow_tools; false if there is none. */
bool
FeCatalogFetchTool(const char *name, FeToolRow *tool)
{
	MemoryContext caller = CurrentMemoryContext;
	Oid			types[1] = {TEXTOID};
	Datum		values[1];
	bool		found;

	values[0] = fe_text(name);
	fe_connect();
	fe_exec(fe_plan(&plan_tool,
					"SELECT name, kind, parameters, config, xmin::text::bigint "
					"FROM %1$s.flow_tools WHERE name = $1", 1, types),
			values, NULL, SPI_OK_SELECT, 1);
	found = SPI_processed > 0;
	if (found)
	{
		HeapTuple	tup = SPI_tuptable->vals[0];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		bool		isnull;
		MemoryContext old;

		tool->name = fe_col_str(caller, 1);
		tool->kind = fe_col_str(caller, 2);
		old = MemoryContextSwitchTo(caller);
		tool->parameters = DatumGetJsonbPCopy(SPI_getbinval(tup, desc, 3, &isnull));
		tool->config = DatumGetJsonbPCopy(SPI_getbinval(tup, desc, 4, &isnull));
		MemoryContextSwitchTo(old);
		tool->xmin = (uint64) DatumGetInt64(SPI_getbinval(tup, desc, 5, &isnull));
	}
	fe_finish();
	return found;
}

/* ---------------------------------------------------------------------
 * Runs
 * ---------------------------------------------------------------------
 */
static SPIPlanPtr plan_run_lock = NULL;
static SPIPlanPtr plan_run_insert = NULL;
static SPIPlanPtr plan_run_update = NULL;
static SPIPlanPtr plan_run_update_batch = NULL;

/* Lock run `id` and read it into *row; false if there is no such run. */
bool
FeCatalogLockRun(pg_uuid_t *id, FeRunRow *row)
{
	MemoryContext caller = CurrentMemoryContext;
	Oid			types[1] = {UUIDOID};
	Datum		values[1];
	bool		found;

	if (fe_defer.on && fe_deferred_run(id))
		FeCatalogDeferFlush();
	values[0] = fe_uuid(id);
	fe_connect();
	fe_exec(fe_plan(&plan_run_lock,
					"SELECT flow, version, status, state, context::text, response, key, "
					"error::text, cursor::text, step_seq, event_seq, message_seq, queued_events, "
					"timeout_at, session FROM %1$s.flow_runs WHERE id = $1 FOR UPDATE", 1, types),
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
		{
			bool		isnull;
			Datum		d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 14, &isnull);

			row->timeout_at = isnull ? 0 : DatumGetTimestampTz(d);
		}
		row->session = fe_col_str(caller, 15);
	}
	fe_finish();
	return found;
}

static SPIPlanPtr plan_run_handoff = NULL;
static SPIPlanPtr plan_run_status = NULL;

/*
 * The status of run `id` as of a new snapshot, or NULL if there is no such
 * run; *mine tells whether this transaction wrote the row's version.
 */
char *
FeCatalogRunStatus(pg_uuid_t *id, bool *mine)
{
	MemoryContext caller = CurrentMemoryContext;
	Oid			types[1] = {UUIDOID};
	Datum		values[1];
	char	   *status = NULL;

	values[0] = fe_uuid(id);
	fe_connect();
	fe_exec(fe_plan(&plan_run_status,
					"SELECT status, xmin FROM %1$s.flow_runs WHERE id = $1", 1, types),
			values, NULL, SPI_OK_SELECT, 1);
	if (SPI_processed > 0)
	{
		bool		isnull;
		TransactionId xmin;

		status = fe_col_str(caller, 1);
		xmin = DatumGetTransactionId(SPI_getbinval(SPI_tuptable->vals[0],
												   SPI_tuptable->tupdesc, 2, &isnull));
		*mine = TransactionIdIsCurrentTransactionId(xmin);
	}
	fe_finish();
	return status;
}
static SPIPlanPtr plan_session_run = NULL;

/* Mark run `id` as handed to a human (handoff: JSON text). */
void
FeCatalogSetHandoff(pg_uuid_t *id, const char *handoff)
{
	Oid			types[2] = {UUIDOID, TEXTOID};
	Datum		values[2];

	values[0] = fe_uuid(id);
	values[1] = fe_text(handoff);
	fe_connect();
	fe_exec(fe_plan(&plan_run_handoff,
					"UPDATE %1$s.flow_runs SET handoff = $2::jsonb WHERE id = $1", 2, types),
			values, NULL, SPI_OK_UPDATE, 0);
	fe_finish();
}

/* The id (text) of the session's active run, or NULL. */
char *
FeCatalogActiveSessionRun(const char *session)
{
	MemoryContext caller = CurrentMemoryContext;
	Oid			types[1] = {TEXTOID};
	Datum		values[1];
	char	   *run = NULL;

	values[0] = fe_text(session);
	fe_connect();
	fe_exec(fe_plan(&plan_session_run,
					"SELECT id::text FROM %1$s.flow_runs "
					"WHERE session = $1 AND status IN ('running', 'waiting')", 1, types),
			values, NULL, SPI_OK_SELECT, 1);
	if (SPI_processed > 0)
		run = fe_col_str(caller, 1);
	fe_finish();
	return run;
}

/*
 * Insert or update the run row.  The context travels as JSON text and is
 * parsed once here; *context_out receives the parsed value.
 */
void
FeCatalogSaveRun(FeRunRow *row, bool insert, bool finished, Jsonb **context_out)
{
	Oid			types[17] = {UUIDOID, TEXTOID, INT4OID, TEXTOID, TEXTOID, JSONBOID,
		TEXTOID, TEXTOID, TEXTOID, TEXTOID, INT4OID, INT4OID, INT4OID, INT4OID, BOOLOID,
	TIMESTAMPTZOID, TEXTOID};
	Datum		values[17];
	char		nulls[18] = "                 ";
	Jsonb	   *context;

	context = DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(row->context)));
	if (context_out)
		*context_out = context;
	if (fe_defer.on && !insert)
	{
		MemoryContext old = MemoryContextSwitchTo(TopTransactionContext);
		FeSaveRow  *sv = palloc(sizeof(FeSaveRow));

		sv->row = *row;
		sv->finished = finished;
		fe_defer.saves = lappend(fe_defer.saves, sv);
		MemoryContextSwitchTo(old);
		return;
	}
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
	values[15] = row->timeout_at ? TimestampTzGetDatum(row->timeout_at) : (nulls[15] = 'n', (Datum) 0);
	values[16] = row->session ? fe_text(row->session) : (nulls[16] = 'n', (Datum) 0);

	fe_connect();
	if (insert)
		fe_exec(fe_plan(&plan_run_insert,
						"INSERT INTO %1$s.flow_runs (id, flow, version, status, state, context, "
						"response, key, error, cursor, step_seq, event_seq, message_seq, "
						"queued_events, finished_at, timeout_at, session) "
						"VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9::jsonb, $10::jsonb, $11, $12, "
						"$13, $14, CASE WHEN $15 THEN clock_timestamp() END, $16, $17)", 17, types),
				values, nulls, SPI_OK_INSERT, 0);
	else
		fe_exec(fe_plan(&plan_run_update,
						"UPDATE %1$s.flow_runs SET status = $4, state = $5, context = $6, "
						"response = $7, error = $9::jsonb, cursor = $10::jsonb, step_seq = $11, "
						"event_seq = $12, message_seq = $13, queued_events = $14, "
						"updated_at = clock_timestamp(), "
						"finished_at = CASE WHEN $15 THEN clock_timestamp() END, "
						"timeout_at = $16 WHERE id = $1",
						17, types),
				values, nulls, SPI_OK_UPDATE, 0);
	fe_finish();
}

static void
fe_write_saves(List *saves)
{
	int			n = list_length(saves);
	FeColumn	cols[13];
	Oid			ctypes[13] = {UUIDOID, TEXTOID, TEXTOID, TEXTOID, TEXTOID, TEXTOID, TEXTOID,
		INT4OID, INT4OID, INT4OID, INT4OID, BOOLOID, TIMESTAMPTZOID};
	ListCell   *lc;
	int			i = 0,
				c;

	if (n == 0)
		return;
	for (c = 0; c < 13; c++)
		fe_col_init(&cols[c], ctypes[c], n);
	foreach(lc, saves)
	{
		FeSaveRow  *sv = (FeSaveRow *) lfirst(lc);
		FeRunRow   *r = &sv->row;

		cols[0].values[i] = fe_uuid(&r->id);
		fe_col_text(&cols[1], i, r->status);
		fe_col_text(&cols[2], i, r->state);
		fe_col_text(&cols[3], i, r->context);
		fe_col_text(&cols[4], i, r->response);
		fe_col_text(&cols[5], i, r->error);
		fe_col_text(&cols[6], i, r->cursor);
		cols[7].values[i] = Int32GetDatum(r->step_seq);
		cols[8].values[i] = Int32GetDatum(r->event_seq);
		cols[9].values[i] = Int32GetDatum(r->message_seq);
		cols[10].values[i] = Int32GetDatum(r->queued_events);
		cols[11].values[i] = BoolGetDatum(sv->finished);
		if (r->timeout_at == 0)
			cols[12].nulls[i] = true;
		else
			cols[12].values[i] = TimestampTzGetDatum(r->timeout_at);
		i++;
	}
	fe_exec_arrays(&plan_run_update_batch,
				   "UPDATE %1$s.flow_runs r SET status = u.status, state = u.state, "
				   "context = u.context::jsonb, response = u.response, error = u.error::jsonb, "
				   "cursor = u.cursor::jsonb, step_seq = u.step_seq, event_seq = u.event_seq, "
				   "message_seq = u.message_seq, queued_events = u.queued_events, "
				   "updated_at = clock_timestamp(), "
				   "finished_at = CASE WHEN u.finished THEN clock_timestamp() END, "
				   "timeout_at = u.timeout_at "
				   "FROM unnest($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) "
				   "AS u(id, status, state, context, response, error, cursor, step_seq, event_seq, "
				   "message_seq, queued_events, finished, timeout_at) WHERE r.id = u.id",
				   cols, 13, n, SPI_OK_UPDATE);
}

/* ---------------------------------------------------------------------
 * Steps, events and messages: one multi-row INSERT per table per call
 * (per record transaction in the worker), keyed by a run-id column
 * ---------------------------------------------------------------------
 */
static SPIPlanPtr plan_steps_insert = NULL;
static SPIPlanPtr plan_events_insert = NULL;
static SPIPlanPtr plan_messages_insert = NULL;

static void
fe_write_steps(List *runs, List *steps)
{
	int			n = list_length(steps);
	FeColumn	cols[12];
	Oid			ctypes[12] = {UUIDOID, INT4OID, TEXTOID, TEXTOID, INT4OID, TEXTOID, TEXTOID,
		TEXTOID, TEXTOID, TEXTOID, TIMESTAMPTZOID, TIMESTAMPTZOID};
	ListCell   *lc;
	int			i = 0,
				c;

	if (n == 0)
		return;
	for (c = 1; c < 12; c++)
		fe_col_init(&cols[c], ctypes[c], n);
	fe_col_runs(&cols[0], runs, NULL, n);
	foreach(lc, steps)
	{
		FeStepRow  *s = (FeStepRow *) lfirst(lc);

		cols[1].values[i] = Int32GetDatum(s->seq);
		fe_col_text(&cols[2], i, s->state);
		fe_col_text(&cols[3], i, s->phase);
		cols[4].values[i] = Int32GetDatum(s->action);
		fe_col_text(&cols[5], i, s->executor);
		fe_col_text(&cols[6], i, s->status);
		fe_col_text(&cols[7], i, s->input);
		fe_col_text(&cols[8], i, s->output);
		fe_col_text(&cols[9], i, s->error);
		cols[10].values[i] = TimestampTzGetDatum(s->started_at);
		if (s->finished_at == 0)
			cols[11].nulls[i] = true;
		else
			cols[11].values[i] = TimestampTzGetDatum(s->finished_at);
		i++;
	}
	fe_exec_arrays(&plan_steps_insert,
				   "INSERT INTO %1$s.flow_run_steps (run_id, seq, state, phase, action, executor, "
				   "status, input, output, error, attempts, started_at, finished_at, due_at) "
				   "SELECT s.run_id, s.seq, s.state, s.phase, s.action, s.executor, s.status, "
				   "s.input::jsonb, s.output::jsonb, s.error::jsonb, "
				   "CASE WHEN s.status = 'pending' THEN 0 ELSE 1 END, "
				   "s.started_at, s.finished_at, "
				   "CASE WHEN s.status = 'pending' THEN s.started_at END "
				   "FROM unnest($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) "
				   "AS s(run_id, seq, state, phase, action, executor, status, input, output, error, "
				   "started_at, finished_at)",
				   cols, 12, n, SPI_OK_INSERT);
}

static void
fe_write_events(List *runs, List *events)
{
	int			n = list_length(events);
	FeColumn	cols[8];
	Oid			ctypes[8] = {UUIDOID, INT4OID, TEXTOID, TEXTOID, TEXTOID, TEXTOID, TEXTOID, TEXTOID};
	ListCell   *lc;
	int			i = 0,
				c;

	if (n == 0)
		return;
	for (c = 1; c < 8; c++)
		fe_col_init(&cols[c], ctypes[c], n);
	fe_col_runs(&cols[0], runs, NULL, n);
	foreach(lc, events)
	{
		FeEventRow *e = (FeEventRow *) lfirst(lc);

		cols[1].values[i] = Int32GetDatum(e->seq);
		fe_col_text(&cols[2], i, e->event);
		fe_col_text(&cols[3], i, e->source);
		fe_col_text(&cols[4], i, e->payload);
		fe_col_text(&cols[5], i, e->status);
		fe_col_text(&cols[6], i, e->from_state);
		fe_col_text(&cols[7], i, e->to_state);
		i++;
	}
	fe_exec_arrays(&plan_events_insert,
				   "INSERT INTO %1$s.flow_events (run_id, seq, event, source, payload, status, "
				   "from_state, to_state, consumed_at) "
				   "SELECT e.run_id, e.seq, e.event, e.source, e.payload::jsonb, e.status, "
				   "e.from_state, e.to_state, "
				   "CASE WHEN e.status = 'consumed' THEN clock_timestamp() END "
				   "FROM unnest($1, $2, $3, $4, $5, $6, $7, $8) "
				   "AS e(run_id, seq, event, source, payload, status, from_state, to_state)",
				   cols, 8, n, SPI_OK_INSERT);
}

static void
fe_write_messages(List *runs, List *messages)
{
	int			n = list_length(messages);
	FeColumn	cols[4];
	Oid			ctypes[4] = {UUIDOID, INT4OID, TEXTOID, TEXTOID};
	ListCell   *lc;
	int			i = 0,
				c;

	if (n == 0)
		return;
	for (c = 1; c < 4; c++)
		fe_col_init(&cols[c], ctypes[c], n);
	fe_col_runs(&cols[0], runs, NULL, n);
	foreach(lc, messages)
	{
		FeMessageRow *m = (FeMessageRow *) lfirst(lc);

		cols[1].values[i] = Int32GetDatum(m->seq);
		fe_col_text(&cols[2], i, m->role);
		fe_col_text(&cols[3], i, m->content);
		i++;
	}
	fe_exec_arrays(&plan_messages_insert,
				   "INSERT INTO %1$s.flow_messages (run_id, seq, role, content) "
				   "SELECT m.run_id, m.seq, m.role, m.content FROM unnest($1, $2, $3, $4) "
				   "AS m(run_id, seq, role, content)",
				   cols, 4, n, SPI_OK_INSERT);
}

/* The rows one engine call produced, for one run: written now, or buffered. */
static void
fe_insert_rows(List **druns, List **drows, void (*write) (List *, List *),
			   pg_uuid_t *run, List *rows)
{
	List	   *runs = NIL;
	int			i;

	if (rows == NIL)
		return;
	if (fe_defer.on)
	{
		fe_defer_rows(druns, drows, run, rows);
		return;
	}
	for (i = 0; i < list_length(rows); i++)
		runs = lappend(runs, run);
	write(runs, rows);
}

void
FeCatalogInsertSteps(pg_uuid_t *run, List *steps)
{
	fe_insert_rows(&fe_defer.step_runs, &fe_defer.steps, fe_write_steps, run, steps);
}

void
FeCatalogInsertEvents(pg_uuid_t *run, List *events)
{
	fe_insert_rows(&fe_defer.event_runs, &fe_defer.events, fe_write_events, run, events);
}

void
FeCatalogInsertMessages(pg_uuid_t *run, List *messages)
{
	fe_insert_rows(&fe_defer.message_runs, &fe_defer.messages, fe_write_messages, run, messages);
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

/*
 * Is step `seq` of `run` still pending (or in flight)?  Locks it.  With
 * attempts >= 0, only a running step claimed for that attempt counts.
 */
bool
FeCatalogStepPending(pg_uuid_t *run, int seq, int attempts, char **executor)
{
	MemoryContext caller = CurrentMemoryContext;
	Oid			types[2] = {UUIDOID, INT4OID};
	Datum		values[2];
	bool		pending = false;

	values[0] = fe_uuid(run);
	values[1] = Int32GetDatum(seq);
	fe_connect();
	fe_exec(fe_plan(&plan_step_lock,
					"SELECT executor, status, attempts FROM %1$s.flow_run_steps "
					"WHERE run_id = $1 AND seq = $2 FOR UPDATE", 2, types),
			values, NULL, SPI_OK_SELECT, 1);
	if (SPI_processed > 0)
	{
		char	   *status = fe_col_str(caller, 2);

		*executor = fe_col_str(caller, 1);
		if (attempts >= 0)
			pending = strcmp(status, "running") == 0 && fe_col_int(3) == attempts;
		else
			pending = strcmp(status, "pending") == 0 || strcmp(status, "running") == 0;
	}
	fe_finish();
	return pending;
}

static void
fe_write_finishes(List *finishes)
{
	int			n = list_length(finishes);
	FeColumn	cols[5];
	Oid			ctypes[5] = {UUIDOID, INT4OID, TEXTOID, TEXTOID, TEXTOID};
	ListCell   *lc;
	int			i = 0,
				c;

	if (n == 0)
		return;
	for (c = 0; c < 5; c++)
		fe_col_init(&cols[c], ctypes[c], n);
	foreach(lc, finishes)
	{
		FeFinishRow *f = (FeFinishRow *) lfirst(lc);

		cols[0].values[i] = fe_uuid(&f->run);
		cols[1].values[i] = Int32GetDatum(f->seq);
		fe_col_text(&cols[2], i, f->status);
		fe_col_text(&cols[3], i, f->output);
		fe_col_text(&cols[4], i, f->error);
		i++;
	}
	fe_exec_arrays(&plan_step_finish,
				   "UPDATE %1$s.flow_run_steps s SET status = u.status, output = u.output::jsonb, "
				   "error = u.error::jsonb, attempts = greatest(s.attempts, 1), "
				   "started_at = coalesce(s.started_at, clock_timestamp()), "
				   "finished_at = clock_timestamp(), due_at = NULL, lease_until = NULL "
				   "FROM unnest($1, $2, $3, $4, $5) AS u(run_id, seq, status, output, error) "
				   "WHERE s.run_id = u.run_id AND s.seq = u.seq",
				   cols, 5, n, SPI_OK_UPDATE);
}

void
FeCatalogFinishStep(pg_uuid_t *run, int seq, const char *status,
					const char *output, const char *error)
{
	MemoryContext old = MemoryContextSwitchTo(fe_defer.on ? TopTransactionContext
											  : CurrentMemoryContext);
	FeFinishRow *f = palloc(sizeof(FeFinishRow));

	memcpy(&f->run, run, sizeof(pg_uuid_t));
	f->seq = seq;
	f->status = status;
	f->output = output;
	f->error = error;
	if (fe_defer.on)
		fe_defer.finishes = lappend(fe_defer.finishes, f);
	MemoryContextSwitchTo(old);
	if (!fe_defer.on)
		fe_write_finishes(list_make1(f));
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
					"finished_at = clock_timestamp(), due_at = NULL, lease_until = NULL "
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
/*
 * Run fn(arg) in a subtransaction.  On an error, roll the subtransaction
 * back, return false and hand the error over in *error; query cancels and
 * shutdowns are re-raised.
 */
bool
FeGuarded(FeGuardedFn fn, void *arg, Datum *result, ErrorData **error)
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

	/* the user's function sees every write made so far */
	FeCatalogDeferFlush();
	c.function = function;
	c.args_json = args_json;
	c.result_cxt = CurrentMemoryContext;
	*error = NULL;
	if (!FeGuarded(fe_sql_call, &c, &result, error))
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
	if (FeGuarded(fe_sql_call, &c, &result, &error))
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

/* ---------------------------------------------------------------------
 * The worker's queue: claims, leases, retries, timers, providers, secrets
 *
 * A step the worker claims goes from 'pending' (due_at <= now) to
 * 'running' with attempts + 1 and a lease, in one short transaction with
 * FOR UPDATE SKIP LOCKED.  A step whose lease lapses, or every running
 * step when the worker starts, goes back to 'pending' to be sent again.
 * ---------------------------------------------------------------------
 */
static SPIPlanPtr plan_claim = NULL;
static SPIPlanPtr plan_release = NULL;
static SPIPlanPtr plan_next_due = NULL;
static SPIPlanPtr plan_due_timers = NULL;
static SPIPlanPtr plan_providers = NULL;
static SPIPlanPtr plan_secret = NULL;
static SPIPlanPtr plan_claimed = NULL;
static SPIPlanPtr plan_retry = NULL;
static SPIPlanPtr plan_usage_step = NULL;
static SPIPlanPtr plan_usage_run = NULL;
static SPIPlanPtr plan_fail_step = NULL;
static SPIPlanPtr plan_fail_run = NULL;

/*
 * Is the extension installed in this database, at the library's version?
 * (The worker asks each turn; it leaves a database alone until it is.)
 */
bool
FeCatalogExtensionExists(void)
{
	static Oid	ready_oid = InvalidOid;
	Oid			oid = get_extension_oid("flow_engine", true);
	char	   *version = NULL;
	bool		ready;

	if (!OidIsValid(oid))
		return false;
	if (oid == ready_oid)
		return true;			/* the same installation, already checked */
	fe_connect();
	ready = fe_ext_lookup(&version) != NULL && strcmp(version, FE_VERSION) == 0;
	fe_finish();
	ready_oid = ready ? oid : InvalidOid;
	return ready;
}

/*
 * Claim up to `limit` due steps.  A step's lease lasts its timeout (times
 * `chain` for llm and nlu steps, which may try several providers) plus
 * `margin_ms`.  Returns a list of FeClaim in the caller's context.
 */
List *
FeCatalogClaimSteps(int limit, int default_timeout_ms, int chain, int margin_ms)
{
	MemoryContext caller = CurrentMemoryContext;
	Oid			types[4] = {INT4OID, INT4OID, INT4OID, INT4OID};
	Datum		values[4];
	List	   *claims = NIL;
	uint64		i;

	values[0] = Int32GetDatum(limit);
	values[1] = Int32GetDatum(default_timeout_ms);
	values[2] = Int32GetDatum(chain);
	values[3] = Int32GetDatum(margin_ms);
	fe_connect();
	fe_exec(fe_plan(&plan_claim,
					"WITH due AS ("
					" SELECT run_id, seq FROM %1$s.flow_run_steps"
					" WHERE status = 'pending' AND due_at <= clock_timestamp()"
					" ORDER BY due_at LIMIT $1 FOR UPDATE SKIP LOCKED) "
					"UPDATE %1$s.flow_run_steps s SET status = 'running', attempts = s.attempts + 1, "
					" started_at = coalesce(s.started_at, clock_timestamp()), due_at = NULL, "
					" lease_until = clock_timestamp() + make_interval(secs => ("
					"  coalesce(CASE WHEN jsonb_typeof(s.input->'timeout_ms') = 'number' "
					"   THEN (s.input->>'timeout_ms')::numeric END, $2)"
					"  * CASE WHEN s.executor IN ('llm', 'nlu') THEN $3 ELSE 1 END + $4) / 1000.0) "
					"FROM due WHERE s.run_id = due.run_id AND s.seq = due.seq "
					"RETURNING s.run_id, s.seq, s.executor, s.input, s.attempts, s.state",
					4, types),
			values, NULL, SPI_OK_UPDATE_RETURNING, 0);
	for (i = 0; i < SPI_processed; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		MemoryContext old = MemoryContextSwitchTo(caller);
		FeClaim    *c = palloc0(sizeof(FeClaim));
		bool		isnull;
		Datum		d;

		memcpy(&c->run, DatumGetUUIDP(SPI_getbinval(tup, desc, 1, &isnull)), sizeof(pg_uuid_t));
		c->seq = DatumGetInt32(SPI_getbinval(tup, desc, 2, &isnull));
		c->executor = SPI_getvalue(tup, desc, 3);
		d = SPI_getbinval(tup, desc, 4, &isnull);
		c->input = isnull ? NULL : DatumGetJsonbPCopy(d);
		c->attempts = DatumGetInt32(SPI_getbinval(tup, desc, 5, &isnull));
		c->state = SPI_getvalue(tup, desc, 6);
		claims = lappend(claims, c);
		MemoryContextSwitchTo(old);
	}
	fe_finish();
	return claims;
}

/*
 * Send again every running step whose lease lapsed before `before`
 * (pass DT_NOEND at the worker's start: all of them).  Returns how many.
 */
uint64
FeCatalogReleaseSteps(TimestampTz before)
{
	Oid			types[1] = {TIMESTAMPTZOID};
	Datum		values[1];
	uint64		n;

	values[0] = TimestampTzGetDatum(before);
	fe_connect();
	fe_exec(fe_plan(&plan_release,
					"UPDATE %1$s.flow_run_steps SET status = 'pending', due_at = clock_timestamp(), "
					"lease_until = NULL WHERE status = 'running' AND lease_until < $1",
					1, types),
			values, NULL, SPI_OK_UPDATE, 0);
	n = SPI_processed;
	fe_finish();
	return n;
}

/* When something is next due: a step, a lease or a timer (0 if nothing). */
void
FeCatalogNextDue(TimestampTz *step, TimestampTz *lease, TimestampTz *timer)
{
	bool		isnull;
	Datum		d;

	fe_connect();
	fe_exec(fe_plan(&plan_next_due,
					"SELECT (SELECT min(due_at) FROM %1$s.flow_run_steps WHERE status = 'pending'), "
					"(SELECT min(lease_until) FROM %1$s.flow_run_steps WHERE status = 'running'), "
					"(SELECT min(timeout_at) FROM %1$s.flow_runs WHERE timeout_at IS NOT NULL)",
					0, NULL),
			NULL, NULL, SPI_OK_SELECT, 1);
	d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	*step = isnull ? 0 : DatumGetTimestampTz(d);
	d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull);
	*lease = isnull ? 0 : DatumGetTimestampTz(d);
	d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 3, &isnull);
	*timer = isnull ? 0 : DatumGetTimestampTz(d);
	fe_finish();
}

/* Runs whose timer is due, locked; a list of pg_uuid_t *. */
List *
FeCatalogDueTimers(int limit)
{
	MemoryContext caller = CurrentMemoryContext;
	Oid			types[1] = {INT4OID};
	Datum		values[1];
	List	   *ids = NIL;
	uint64		i;

	values[0] = Int32GetDatum(limit);
	fe_connect();
	fe_exec(fe_plan(&plan_due_timers,
					"SELECT id FROM %1$s.flow_runs WHERE timeout_at <= clock_timestamp() "
					"ORDER BY timeout_at LIMIT $1 FOR UPDATE SKIP LOCKED", 1, types),
			values, NULL, SPI_OK_SELECT, 0);
	for (i = 0; i < SPI_processed; i++)
	{
		bool		isnull;
		MemoryContext old = MemoryContextSwitchTo(caller);
		pg_uuid_t  *id = palloc(sizeof(pg_uuid_t));

		memcpy(id, DatumGetUUIDP(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc,
											   1, &isnull)), sizeof(pg_uuid_t));
		ids = lappend(ids, id);
		MemoryContextSwitchTo(old);
	}
	fe_finish();
	return ids;
}

/* Enabled providers in the order they are tried; a list of FeProvider *. */
List *
FeCatalogProviders(void)
{
	MemoryContext caller = CurrentMemoryContext;
	List	   *list = NIL;
	uint64		i;

	fe_connect();
	fe_exec(fe_plan(&plan_providers,
					"SELECT name, rtrim(base_url, '/'), model, api_key, cost_in_per_1k::float8, "
					"cost_out_per_1k::float8, timeout_ms FROM %1$s.flow_providers "
					"WHERE enabled ORDER BY priority, name", 0, NULL),
			NULL, NULL, SPI_OK_SELECT, 0);
	for (i = 0; i < SPI_processed; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		MemoryContext old = MemoryContextSwitchTo(caller);
		FeProvider *p = palloc0(sizeof(FeProvider));
		bool		isnull;
		Datum		d;

		p->name = SPI_getvalue(tup, desc, 1);
		p->base_url = SPI_getvalue(tup, desc, 2);
		p->model = SPI_getvalue(tup, desc, 3);
		p->api_key = SPI_getvalue(tup, desc, 4);
		p->cost_in_per_1k = DatumGetFloat8(SPI_getbinval(tup, desc, 5, &isnull));
		p->cost_out_per_1k = DatumGetFloat8(SPI_getbinval(tup, desc, 6, &isnull));
		d = SPI_getbinval(tup, desc, 7, &isnull);
		p->timeout_ms = isnull ? 0 : DatumGetInt32(d);
		list = lappend(list, p);
		MemoryContextSwitchTo(old);
	}
	fe_finish();
	return list;
}

/* The value of secret `name`, or NULL. */
char *
FeCatalogSecret(const char *name)
{
	MemoryContext caller = CurrentMemoryContext;
	Oid			types[1] = {TEXTOID};
	Datum		values[1];
	char	   *value = NULL;

	values[0] = fe_text(name);
	fe_connect();
	fe_exec(fe_plan(&plan_secret,
					"SELECT value FROM %1$s.flow_secrets WHERE name = $1", 1, types),
			values, NULL, SPI_OK_SELECT, 1);
	if (SPI_processed > 0)
		value = fe_col_str(caller, 1);
	fe_finish();
	return value;
}

/*
 * Lock the run and tell whether step `seq` is still the worker's: running,
 * with the attempt number the worker claimed.  A cancelled run, a step
 * completed through flow_step_complete, or a lapsed and re-claimed lease
 * make the result stale.
 */
bool
FeCatalogStepClaimed(pg_uuid_t *run, int seq, int attempts)
{
	Oid			types[3] = {UUIDOID, INT4OID, INT4OID};
	Datum		values[3];
	bool		mine;

	values[0] = fe_uuid(run);
	values[1] = Int32GetDatum(seq);
	values[2] = Int32GetDatum(attempts);
	fe_connect();
	fe_exec(fe_plan(&plan_claimed,
					"SELECT EXISTS (SELECT 1 FROM %1$s.flow_run_steps "
					" WHERE run_id = $1 AND seq = $2 AND status = 'running' AND attempts = $3) "
					"FROM %1$s.flow_runs WHERE id = $1 FOR UPDATE", 3, types),
			values, NULL, SPI_OK_SELECT, 1);
	mine = SPI_processed > 0 && fe_col_int(1) != 0;
	fe_finish();
	return mine;
}

/* Put a failed attempt back in the queue, due after delay_ms. */
void
FeCatalogRetryStep(pg_uuid_t *run, int seq, int delay_ms, const char *error)
{
	Oid			types[4] = {UUIDOID, INT4OID, INT4OID, TEXTOID};
	Datum		values[4];

	values[0] = fe_uuid(run);
	values[1] = Int32GetDatum(seq);
	values[2] = Int32GetDatum(delay_ms);
	values[3] = fe_text(error);
	fe_connect();
	fe_exec(fe_plan(&plan_retry,
					"UPDATE %1$s.flow_run_steps SET status = 'pending', lease_until = NULL, "
					"due_at = clock_timestamp() + make_interval(secs => $3 / 1000.0), "
					"error = $4::jsonb WHERE run_id = $1 AND seq = $2", 4, types),
			values, NULL, SPI_OK_UPDATE, 0);
	fe_finish();
	FeWorkerWakeAtCommit();
}

/* Add one LLM response's usage to its step and its run. */
void
FeCatalogAddUsage(pg_uuid_t *run, int seq, const char *provider, const char *model,
				  int64 tokens_in, int64 tokens_out, double cost)
{
	Oid			types[7] = {UUIDOID, INT4OID, TEXTOID, TEXTOID, INT8OID, INT8OID, FLOAT8OID};
	Datum		values[7];

	values[0] = fe_uuid(run);
	values[1] = Int32GetDatum(seq);
	values[2] = fe_text(provider);
	values[3] = fe_text(model);
	values[4] = Int64GetDatum(tokens_in);
	values[5] = Int64GetDatum(tokens_out);
	values[6] = Float8GetDatum(cost);
	fe_connect();
	fe_exec(fe_plan(&plan_usage_step,
					"UPDATE %1$s.flow_run_steps SET provider = $3, model = $4, "
					"tokens_in = coalesce(tokens_in, 0) + $5, tokens_out = coalesce(tokens_out, 0) + $6, "
					"cost = coalesce(cost, 0) + $7::numeric WHERE run_id = $1 AND seq = $2",
					7, types),
			values, NULL, SPI_OK_UPDATE, 0);
	fe_exec(fe_plan(&plan_usage_run,
					"UPDATE %1$s.flow_runs SET tokens_in = tokens_in + $5, "
					"tokens_out = tokens_out + $6, cost = cost + $7::numeric "
					"WHERE id = $1",
					7, types),
			values, NULL, SPI_OK_UPDATE, 0);
	fe_finish();
}

/*
 * Last resort for a poison result: fail the step and the run directly,
 * without running any of the flow.
 */
void
FeCatalogFailRun(pg_uuid_t *run, int seq, const char *error)
{
	Oid			types[3] = {UUIDOID, INT4OID, TEXTOID};
	Datum		values[3];

	values[0] = fe_uuid(run);
	values[1] = Int32GetDatum(seq);
	values[2] = fe_text(error);
	fe_connect();
	fe_exec(fe_plan(&plan_fail_step,
					"UPDATE %1$s.flow_run_steps SET status = 'failed', error = $3::jsonb, "
					"finished_at = clock_timestamp(), lease_until = NULL, due_at = NULL "
					"WHERE run_id = $1 AND seq = $2", 3, types),
			values, NULL, SPI_OK_UPDATE, 0);
	fe_exec(fe_plan(&plan_fail_run,
					"UPDATE %1$s.flow_runs SET status = 'failed', error = $3::jsonb, cursor = NULL, "
					"timeout_at = NULL, updated_at = clock_timestamp(), finished_at = clock_timestamp() "
					"WHERE id = $1 AND status IN ('running', 'waiting')",
					3, types),
			values, NULL, SPI_OK_UPDATE, 0);
	fe_finish();
}
