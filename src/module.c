/*-------------------------------------------------------------------------
 *
 * module.c
 *	  Library entry point: GUCs, and small helpers shared by every file.
 *
 * flow_engine is meant for shared_preload_libraries: only then does the
 * postmaster register the background worker and its shared memory.  Every
 * SQL function also works when the library is loaded on first use; runs
 * then wait at their first asynchronous step until a worker serves them.
 *
 * Every GUC is defined here, in one place.
 *
 * Transactions and locks: none here.
 *
 *-------------------------------------------------------------------------
 */
#include "flow_engine.h"

#include "fmgr.h"
#include "lib/stringinfo.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/json.h"

PG_MODULE_MAGIC;

int			fe_max_transitions = 1000;
int			fe_expr_memory_limit_kb = 16384;
char	   *fe_database = NULL;
int			fe_idle_timeout_ms = 10000;
int			fe_max_inflight = 1000;
int			fe_workers = 1;
int			fe_lease_margin_ms = 60000;
int			fe_http_timeout_ms = 30000;
int			fe_http_connect_timeout_ms = 10000;
int			fe_http_max_response_kb = 10240;
int			fe_http_max_host_connections = 32;
int			fe_retry_max_attempts = 3;
int			fe_retry_backoff_ms = 500;
char	   *fe_nlu_url = NULL;

void		_PG_init(void);

void
_PG_init(void)
{
	DefineCustomIntVariable("flow_engine.max_transitions",
							"Most transitions one call may make on one run before the run fails.",
							"Protects against flows that loop without waiting for an event.",
							&fe_max_transitions,
							1000, 1, 1000000,
							PGC_USERSET, 0,
							NULL, NULL, NULL);
	DefineCustomIntVariable("flow_engine.expression_memory_limit",
							"Most memory one expression evaluation may allocate.",
							NULL,
							&fe_expr_memory_limit_kb,
							16384, 256, 1048576,
							PGC_USERSET, GUC_UNIT_KB,
							NULL, NULL, NULL);
	DefineCustomStringVariable("flow_engine.database",
							   "Database the flow_engine worker serves.",
							   "The worker sends the http, llm, nlu and tool steps and fires the timers of this database only.",
							   &fe_database,
							   "postgres",
							   PGC_POSTMASTER, 0,
							   NULL, NULL, NULL);
	DefineCustomIntVariable("flow_engine.workers",
							"Number of flow_engine workers serving the database.",
							"Each claims due steps with FOR UPDATE SKIP LOCKED and has its own connections and in-flight limit.",
							&fe_workers,
							1, 1, FE_MAX_WORKERS,
							PGC_POSTMASTER, 0,
							NULL, NULL, NULL);
	DefineCustomIntVariable("flow_engine.idle_timeout",
							"Longest the worker sleeps when nothing is due; a safety net, since commits wake it.",
							NULL,
							&fe_idle_timeout_ms,
							10000, 100, 3600000,
							PGC_SIGHUP, GUC_UNIT_MS,
							NULL, NULL, NULL);
	DefineCustomIntVariable("flow_engine.max_inflight",
							"Most requests the worker has on the wire at once.",
							NULL,
							&fe_max_inflight,
							1000, 1, 100000,
							PGC_SIGHUP, 0,
							NULL, NULL, NULL);
	DefineCustomIntVariable("flow_engine.lease_margin",
							"Time a claimed step's lease lasts beyond its request timeouts.",
							"When a lease lapses the step is sent again.",
							&fe_lease_margin_ms,
							60000, 1000, 86400000,
							PGC_SIGHUP, GUC_UNIT_MS,
							NULL, NULL, NULL);
	DefineCustomIntVariable("flow_engine.http_timeout",
							"Timeout of a request whose step sets no timeout_ms.",
							NULL,
							&fe_http_timeout_ms,
							30000, 1, 3600000,
							PGC_SIGHUP, GUC_UNIT_MS,
							NULL, NULL, NULL);
	DefineCustomIntVariable("flow_engine.http_connect_timeout",
							"Longest a request may take to connect.",
							NULL,
							&fe_http_connect_timeout_ms,
							10000, 1, 3600000,
							PGC_SIGHUP, GUC_UNIT_MS,
							NULL, NULL, NULL);
	DefineCustomIntVariable("flow_engine.http_max_response_size",
							"Largest response body the worker accepts.",
							"A larger response fails its step without being retried.",
							&fe_http_max_response_kb,
							10240, 1, 1048576,
							PGC_SIGHUP, GUC_UNIT_KB,
							NULL, NULL, NULL);
	DefineCustomIntVariable("flow_engine.http_max_host_connections",
							"Most connections the worker opens to one host.",
							"Further requests to the host wait for a free connection.",
							&fe_http_max_host_connections,
							32, 1, 10000,
							PGC_SIGHUP, 0,
							NULL, NULL, NULL);
	DefineCustomIntVariable("flow_engine.retry_max_attempts",
							"Attempts of a step whose config sets no retry.max_attempts.",
							NULL,
							&fe_retry_max_attempts,
							3, 1, 100,
							PGC_SIGHUP, 0,
							NULL, NULL, NULL);
	DefineCustomIntVariable("flow_engine.retry_backoff",
							"First retry delay of a step whose config sets no retry.backoff_ms.",
							"Each further retry waits twice as long, with jitter.",
							&fe_retry_backoff_ms,
							500, 0, 3600000,
							PGC_SIGHUP, GUC_UNIT_MS,
							NULL, NULL, NULL);
	DefineCustomStringVariable("flow_engine.nlu_url",
							   "Classifier endpoint of nlu steps whose config sets no url.",
							   NULL,
							   &fe_nlu_url,
							   "",
							   PGC_SIGHUP, 0,
							   NULL, NULL, NULL);
	MarkGUCPrefixReserved("flow_engine");

	FeWorkerSetup();
	FeWaitSetup();
}

/* s as a JSON string literal. */
char *
FeJsonQuote(const char *s)
{
	StringInfoData b;

	initStringInfo(&b);
	escape_json(&b, s);
	return b.data;
}

char *
FeJsonbToText(Jsonb *j)
{
	return JsonbToCString(NULL, &j->root, VARSIZE(j));
}

/* Member `key` of JSON object j, when j is an object and the member is not null. */
bool
FeJsonbMember(Jsonb *j, const char *key, JsonbValue *v)
{
	return j && JB_ROOT_IS_OBJECT(j) &&
		getKeyJsonValueFromContainer(&j->root, key, strlen(key), v) != NULL &&
		v->type != jbvNull;
}

/* Member `key` of j as a string, or NULL if it is missing or not a string. */
char *
FeJsonbMemberStr(Jsonb *j, const char *key)
{
	JsonbValue	v;

	if (FeJsonbMember(j, key, &v) && v.type == jbvString)
		return pnstrdup(v.val.string.val, v.val.string.len);
	return NULL;
}
