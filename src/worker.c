/*-------------------------------------------------------------------------
 *
 * worker.c
 *	  The flow_engine background worker: claim due steps, send them with
 *	  http.c, record the results and advance the runs; fire state timers.
 *	  Also the shared latch and the commit callback that wake it.
 *
 * The loop, each turn:
 *	  1. wait on the latch, postmaster death and the curl sockets, until
 *		 the next due time (a retry, a timer, a lease) or the idle timeout;
 *	  2. serve interrupts and SIGHUP;
 *	  3. "claim" transaction: release lapsed leases, fire due timers,
 *		 claim due steps FOR UPDATE SKIP LOCKED, build their requests;
 *		 commit; only then hand the requests to curl;
 *	  4. "record" transaction: for every finished request, in its own
 *		 subtransaction, record the result and advance the run through its
 *		 in-database steps (FeEngineStepComplete), or schedule a retry, or
 *		 build the request for the next provider; commit; start those;
 *	  5. reset the loop's memory context.
 *
 * Transactions and locks: never open across network I/O.  A claim marks
 * steps 'running' with a lease and attempts + 1.  There are
 * flow_engine.workers workers; each claims with SKIP LOCKED.  At its start
 * a lone worker, or the first worker since shared memory was set up (a
 * server start or crash restart), releases every running step, so a kill
 * -9 re-sends them; a worker of several restarted alone leaves the others'
 * steps and lets its own leases lapse.  Results are recorded only
 * if the step is still the one claimed (same attempt, still running):
 * nothing is recorded twice.  One poison result fails its run and never
 * the worker.
 *
 * Memory: each in-flight step (FeJob) has its own context, deleted when
 * its result is recorded; everything else of a turn lives in a context
 * reset at the end of the turn.
 *
 *-------------------------------------------------------------------------
 */
#include "flow_engine.h"

#include <math.h>

#include "access/xact.h"
#include "common/pg_prng.h"
#include "common/jsonapi.h"
#include "lib/stringinfo.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/proc.h"
#include "storage/shmem.h"
#include "storage/spin.h"
#include "tcop/tcopprot.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/json.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "http.h"

/* ---------------------------------------------------------------------
 * Shared state and waking at commit
 * ---------------------------------------------------------------------
 */
typedef struct FeShared
{
	slock_t		mutex;
	bool		recovered;		/* a worker has sent interrupted steps again */
	Latch	   *latch[FE_MAX_WORKERS];	/* each worker's, while it runs */
} FeShared;

static FeShared *fe_shared = NULL;
static shmem_request_hook_type fe_prev_shmem_request = NULL;
static shmem_startup_hook_type fe_prev_shmem_startup = NULL;
static bool fe_wake_at_commit = false;

static void
fe_shmem_request(void)
{
	if (fe_prev_shmem_request)
		fe_prev_shmem_request();
	RequestAddinShmemSpace(MAXALIGN(sizeof(FeShared)));
	RequestAddinShmemSpace(MAXALIGN(FeWaitShmemSize()));
}

static void
fe_shmem_startup(void)
{
	bool		found;

	if (fe_prev_shmem_startup)
		fe_prev_shmem_startup();
	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	fe_shared = ShmemInitStruct("flow_engine", sizeof(FeShared), &found);
	if (!found)
	{
		SpinLockInit(&fe_shared->mutex);
		fe_shared->recovered = false;
		memset(fe_shared->latch, 0, sizeof(fe_shared->latch));
	}
	FeWaitShmemInit();
	LWLockRelease(AddinShmemInitLock);
}

/*
 * At commit, if the transaction queued work, set every worker's latch: each
 * claims with SKIP LOCKED, so an idle one takes what a busy one cannot.
 */
static void
fe_xact_callback(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_PARALLEL_COMMIT:
			if (fe_wake_at_commit && fe_shared)
			{
				Latch	   *latch[FE_MAX_WORKERS];
				int			i;

				SpinLockAcquire(&fe_shared->mutex);
				memcpy(latch, fe_shared->latch, sizeof(latch));
				SpinLockRelease(&fe_shared->mutex);
				for (i = 0; i < FE_MAX_WORKERS; i++)
					if (latch[i])
						SetLatch(latch[i]);
			}
			fe_wake_at_commit = false;
			break;
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PARALLEL_ABORT:
		case XACT_EVENT_PREPARE:
			fe_wake_at_commit = false;
			break;
		default:
			break;
	}
}

/* The current transaction queued work for the worker. */
void
FeWorkerWakeAtCommit(void)
{
	fe_wake_at_commit = true;
}

/*
 * Called once from _PG_init.  The commit callback is registered in every
 * process that loads the library (once: _PG_init runs once per process);
 * the worker and its shared memory only when preloaded.
 */
void
FeWorkerSetup(void)
{
	BackgroundWorker w;
	int			i;

	RegisterXactCallback(fe_xact_callback, NULL);
	if (!process_shared_preload_libraries_in_progress)
		return;
	fe_prev_shmem_request = shmem_request_hook;
	shmem_request_hook = fe_shmem_request;
	fe_prev_shmem_startup = shmem_startup_hook;
	shmem_startup_hook = fe_shmem_startup;

	memset(&w, 0, sizeof(w));
	w.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	w.bgw_start_time = BgWorkerStart_RecoveryFinished;
	w.bgw_restart_time = 1;
	snprintf(w.bgw_library_name, BGW_MAXLEN, "flow_engine");
	snprintf(w.bgw_function_name, BGW_MAXLEN, "FeWorkerMain");
	snprintf(w.bgw_type, BGW_MAXLEN, "flow_engine worker");
	for (i = 0; i < fe_workers; i++)
	{
		if (fe_workers == 1)
			snprintf(w.bgw_name, BGW_MAXLEN, "flow_engine worker");
		else
			snprintf(w.bgw_name, BGW_MAXLEN, "flow_engine worker %d", i + 1);
		w.bgw_main_arg = Int32GetDatum(i);
		RegisterBackgroundWorker(&w);
	}
}

static int	fe_worker_index = 0;

static void
fe_unpublish(int code, Datum arg)
{
	SpinLockAcquire(&fe_shared->mutex);
	fe_shared->latch[fe_worker_index] = NULL;
	SpinLockRelease(&fe_shared->mutex);
}

/*
 * Should this worker, at its start, send again every step left running?
 * Yes for a lone worker, and for the first worker to start since shared
 * memory was set up (after a server start or a crash restart, when no other
 * worker can have a request on the wire).  A worker of several restarted on
 * its own leaves the others' steps alone: its own are sent again when their
 * leases lapse.
 */
static bool
fe_recover_all(void)
{
	bool		first;

	SpinLockAcquire(&fe_shared->mutex);
	first = !fe_shared->recovered;
	fe_shared->recovered = true;
	SpinLockRelease(&fe_shared->mutex);
	return first || fe_workers == 1;
}

/* ---------------------------------------------------------------------
 * Jobs: one claimed step on its way
 * ---------------------------------------------------------------------
 */
typedef struct FeJob
{
	MemoryContext mcxt;
	pg_uuid_t	run;
	int			seq;
	int			attempts;
	FeExecutor	executor;
	char	   *state;
	Jsonb	   *input;
	char	   *idempotency_key;
	int			timeout_ms;
	int			max_attempts;
	int			backoff_ms;

	/* llm and nlu */
	List	   *providers;		/* FeProvider *, in order */
	int			provider;		/* index being tried */
	bool		classify;		/* nlu: the llm fallback is running */
	char	   *nlu_output;		/* nlu: the classifier's answer, if any */
	StringInfoData failures;	/* what went wrong so far, for the error */

	FeHttpRequest *req;			/* the request on the wire */
	bool		again;			/* settle built another request */
} FeJob;

static MemoryContext fe_loop_cxt = NULL;
static MemoryContext fe_jobs_cxt = NULL;

static FeExecutor
fe_executor(const char *name)
{
	if (strcmp(name, "llm") == 0)
		return FE_EXEC_LLM;
	if (strcmp(name, "nlu") == 0)
		return FE_EXEC_NLU;
	if (strcmp(name, "tool") == 0)
		return FE_EXEC_TOOL;
	return FE_EXEC_HTTP;
}

static JsonbContainer *
fe_get_object(Jsonb *j, const char *key)
{
	JsonbValue	v;

	if (FeJsonbMember(j, key, &v) && v.type == jbvBinary && JsonContainerIsObject(v.val.binary.data))
		return v.val.binary.data;
	return NULL;
}

static double
fe_get_num(Jsonb *j, const char *key, double dflt)
{
	JsonbValue	v;

	if (FeJsonbMember(j, key, &v) && v.type == jbvNumeric)
		return DatumGetFloat8(DirectFunctionCall1(numeric_float8, NumericGetDatum(v.val.numeric)));
	return dflt;
}

/* A member as JSON text, or NULL. */
static char *
fe_get_json(Jsonb *j, const char *key)
{
	JsonbValue	v;

	if (!FeJsonbMember(j, key, &v))
		return NULL;
	return FeJsonbToText(JsonbValueToJsonb(&v));
}

static Jsonb *
fe_sub(Jsonb *j, const char *key)
{
	JsonbValue	v;

	if (!FeJsonbMember(j, key, &v))
		return NULL;
	return JsonbValueToJsonb(&v);
}

static Jsonb *
fe_parse(const char *text)
{
	return DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(text)));
}

static Datum
fe_parse_guarded(void *arg)
{
	return JsonbPGetDatum(fe_parse((const char *) arg));
}

/* Is this JSON text?  (The lexer alone: no parse, no error raised.) */
static bool
fe_is_json(const char *text)
{
	JsonLexContext *lex = makeJsonLexContextCstringLen((char *) text, strlen(text),
													   GetDatabaseEncoding(), false);

	return pg_parse_json(lex, &nullSemAction) == JSON_SUCCESS;
}

/*
 * Parse JSON text; NULL if it is not JSON.  The JSON lexer checks the
 * syntax without raising; only text with \u escapes (which jsonb may still
 * refuse) is parsed in a subtransaction.
 */
static Jsonb *
fe_try_parse(const char *text)
{
	Datum		d;
	ErrorData  *e = NULL;
	if (!fe_is_json(text))
		return NULL;
	if (strstr(text, "\\u") == NULL)
		return fe_parse(text);
	if (!FeGuarded(fe_parse_guarded, (void *) text, &d, &e))
		return NULL;
	return DatumGetJsonbP(d);
}

/* ---------------------------------------------------------------------
 * Building requests
 * ---------------------------------------------------------------------
 */

/*
 * Replace every {secret:NAME} in s with the secret's value (JSON-escaped
 * when `in_json`).  Raises if a secret does not exist.  The result is only
 * ever handed to curl: it is never stored, logged or put in an error.
 */
static char *
fe_secrets(const char *s, bool in_json)
{
	StringInfoData b;
	const char *p = s;
	const char *m;

	if (strstr(s, "{secret:") == NULL)
		return pstrdup(s);
	initStringInfo(&b);
	while ((m = strstr(p, "{secret:")) != NULL)
	{
		const char *end = strchr(m, '}');
		char	   *name;
		char	   *value;

		if (end == NULL)
			break;
		appendBinaryStringInfo(&b, p, m - p);
		name = pnstrdup(m + 8, end - m - 8);
		value = FeCatalogSecret(name);
		if (value == NULL)
			ereport(ERROR,
					(errcode(ERRCODE_UNDEFINED_OBJECT),
					 errmsg("secret \"%s\" does not exist", name),
					 errhint("Insert it into flow_secrets.")));
		if (in_json)
		{
			char	   *q = FeJsonQuote(value);

			appendBinaryStringInfo(&b, q + 1, strlen(q) - 2);
		}
		else
			appendStringInfoString(&b, value);
		p = end + 1;
	}
	appendStringInfoString(&b, p);
	return b.data;
}

static FeHttpRequest *
fe_request(FeJob *job, const char *method, const char *url, int timeout_ms)
{
	FeHttpRequest *r;
	MemoryContext old = MemoryContextSwitchTo(job->mcxt);

	r = palloc0(sizeof(FeHttpRequest));
	r->mcxt = job->mcxt;
	r->method = pstrdup(method);
	r->url = pstrdup(url);
	r->timeout_ms = Max(timeout_ms, 1);
	r->max_response = (long) fe_http_max_response_kb * 1024L;
	r->owner = job;
	r->headers = list_make1(psprintf("Idempotency-Key: %s", job->idempotency_key));
	MemoryContextSwitchTo(old);
	return r;
}

static void
fe_header(FeJob *job, const char *name, const char *value)
{
	MemoryContext old = MemoryContextSwitchTo(job->mcxt);

	if (strpbrk(name, "\r\n:") || strpbrk(value, "\r\n"))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("header \"%s\" of an %s step contains a line break",
						name, job->executor == FE_EXEC_TOOL ? "tool" : "http")));
	job->req->headers = lappend(job->req->headers, psprintf("%s: %s", name, value));
	MemoryContextSwitchTo(old);
}

static void
fe_body(FeJob *job, const char *body)
{
	job->req->body = MemoryContextStrdup(job->mcxt, body);
	job->req->body_len = strlen(body);
}

/* The request of an http step, or of an http tool (`spec` is its config). */
static void
fe_build_http(FeJob *job, Jsonb *spec)
{
	char	   *url = FeJsonbMemberStr(spec, "url");
	char	   *method = FeJsonbMemberStr(spec, "method");
	JsonbContainer *headers = fe_get_object(spec, "headers");
	JsonbValue	body;
	bool		has_body = FeJsonbMember(spec, "body", &body);
	bool		content_type = false;

	if (url == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("step has no \"url\"")));
	if (method == NULL)
		method = has_body ? "POST" : "GET";
	job->req = fe_request(job, method, fe_secrets(url, false), job->timeout_ms);
	if (headers)
	{
		JsonbIterator *it = JsonbIteratorInit(headers);
		JsonbValue	k,
					v;
		JsonbIteratorToken tok;

		while ((tok = JsonbIteratorNext(&it, &k, true)) != WJB_DONE)
		{
			char	   *name;
			char	   *value;

			if (tok != WJB_KEY)
				continue;
			name = pnstrdup(k.val.string.val, k.val.string.len);
			(void) JsonbIteratorNext(&it, &v, true);
			if (v.type == jbvNull)
				continue;
			value = v.type == jbvString ? pnstrdup(v.val.string.val, v.val.string.len)
				: FeJsonbToText(JsonbValueToJsonb(&v));
			if (pg_strcasecmp(name, "content-type") == 0)
				content_type = true;
			fe_header(job, name, fe_secrets(value, false));
		}
	}
	if (has_body)
	{
		if (body.type == jbvString)
			fe_body(job, fe_secrets(pnstrdup(body.val.string.val, body.val.string.len), false));
		else
		{
			fe_body(job, fe_secrets(FeJsonbToText(JsonbValueToJsonb(&body)), true));
			if (!content_type)
				fe_header(job, "Content-Type", "application/json");
		}
	}
}

/* The /chat/completions request of an llm step (or nlu fallback) to provider p. */
static void
fe_build_llm(FeJob *job, FeProvider *p, const char *messages)
{
	StringInfoData b;
	char	   *model = FeJsonbMemberStr(job->input, "model");
	char	   *v;
	JsonbValue	tv;
	int			timeout = p->timeout_ms > 0 && !FeJsonbMember(job->input, "timeout_ms", &tv)
		? p->timeout_ms : job->timeout_ms;

	initStringInfo(&b);
	appendStringInfo(&b, "{\"model\": %s, \"messages\": %s",
					 FeJsonQuote(model ? model : p->model), messages);
	if ((v = fe_get_json(job->input, "temperature")) != NULL)
		appendStringInfo(&b, ", \"temperature\": %s", v);
	if ((v = fe_get_json(job->input, "max_tokens")) != NULL)
		appendStringInfo(&b, ", \"max_tokens\": %s", v);
	if ((v = fe_get_json(job->input, "schema")) != NULL)
		appendStringInfo(&b, ", \"response_format\": {\"type\": \"json_schema\", "
						 "\"json_schema\": {\"name\": \"output\", \"strict\": true, \"schema\": %s}}", v);
	else if ((v = fe_get_json(job->input, "response_format")) != NULL)
		appendStringInfo(&b, ", \"response_format\": %s", v);
	else if (job->executor == FE_EXEC_NLU)
		appendStringInfoString(&b, ", \"response_format\": {\"type\": \"json_object\"}");
	appendStringInfoChar(&b, '}');

	job->req = fe_request(job, "POST", psprintf("%s/chat/completions", p->base_url), timeout);
	fe_header(job, "Content-Type", "application/json");
	if (p->api_key && *p->api_key)
		fe_header(job, "Authorization", psprintf("Bearer %s", p->api_key));
	fe_body(job, b.data);
}

/* The messages of an llm step: "messages" as given, or built from "prompt". */
static char *
fe_llm_messages(FeJob *job)
{
	char	   *messages = fe_get_json(job->input, "messages");
	char	   *prompt;
	char	   *system;
	StringInfoData b;

	if (messages)
		return messages;
	prompt = FeJsonbMemberStr(job->input, "prompt");
	if (prompt == NULL)
		prompt = fe_get_json(job->input, "prompt");
	if (prompt == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("llm step has neither \"messages\" nor \"prompt\"")));
	initStringInfo(&b);
	appendStringInfoChar(&b, '[');
	if ((system = FeJsonbMemberStr(job->input, "system")) != NULL)
		appendStringInfo(&b, "{\"role\": \"system\", \"content\": %s}, ", FeJsonQuote(system));
	appendStringInfo(&b, "{\"role\": \"user\", \"content\": %s}]", FeJsonQuote(prompt));
	return b.data;
}

/* The messages that ask an llm to classify an nlu step's text. */
static char *
fe_nlu_messages(FeJob *job)
{
	char	   *text = FeJsonbMemberStr(job->input, "text");
	char	   *intents = fe_get_json(job->input, "intents");
	char	   *ask;

	ask = psprintf("Classify the user's message.%s%s Reply with a JSON object "
				   "{\"intent\": string, \"entities\": object, \"confidence\": number between 0 and 1}.",
				   intents ? " The intent must be one of " : "",
				   intents ? psprintf("%s.", intents) : "");
	return psprintf("[{\"role\": \"system\", \"content\": %s}, {\"role\": \"user\", \"content\": %s}]",
					FeJsonQuote(ask), FeJsonQuote(text ? text : ""));
}

static FeProvider *
fe_current_provider(FeJob *job)
{
	return (FeProvider *) list_nth(job->providers, job->provider);
}

/* The first request of a freshly claimed job. */
static void
fe_build_first(FeJob *job)
{
	switch (job->executor)
	{
		case FE_EXEC_TOOL:
			{
				Jsonb	   *spec = fe_sub(job->input, "request");

				if (spec == NULL)
					ereport(ERROR,
							(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
							 errmsg("tool step has no request")));
				fe_build_http(job, spec);
				break;
			}
		case FE_EXEC_LLM:
			if (job->providers == NIL)
				ereport(ERROR,
						(errcode(ERRCODE_UNDEFINED_OBJECT),
						 errmsg("no llm provider is enabled"),
						 errhint("Insert a row into flow_providers.")));
			fe_build_llm(job, fe_current_provider(job), fe_llm_messages(job));
			break;
		case FE_EXEC_NLU:
			{
				char	   *url = FeJsonbMemberStr(job->input, "url");
				char	   *text = FeJsonbMemberStr(job->input, "text");
				char	   *intents = fe_get_json(job->input, "intents");

				if (url == NULL && fe_nlu_url && *fe_nlu_url)
					url = fe_nlu_url;
				if (text == NULL)
					ereport(ERROR,
							(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
							 errmsg("nlu step has no \"text\"")));
				if (url == NULL)
				{
					/* no classifier: the llm classifies */
					if (job->providers == NIL)
						ereport(ERROR,
								(errcode(ERRCODE_UNDEFINED_OBJECT),
								 errmsg("nlu step has no classifier url and no llm provider is enabled"),
								 errhint("Set \"url\" in the step, set flow_engine.nlu_url, or insert a row into flow_providers.")));
					job->classify = true;
					fe_build_llm(job, fe_current_provider(job), fe_nlu_messages(job));
					break;
				}
				job->req = fe_request(job, "POST", fe_secrets(url, false), job->timeout_ms);
				fe_header(job, "Content-Type", "application/json");
				fe_body(job, psprintf("{\"text\": %s, \"intents\": %s}", FeJsonQuote(text),
									  intents ? intents : "null"));
				break;
			}
		default:
			fe_build_http(job, job->input);
			break;
	}
}

/* ---------------------------------------------------------------------
 * Settling a result
 * ---------------------------------------------------------------------
 */
/* What the request said about itself, without secrets. */
static char *
fe_public_url(FeJob *job)
{
	Jsonb	   *spec = job->executor == FE_EXEC_TOOL ? fe_sub(job->input, "request") : job->input;
	char	   *url = NULL;

	if (job->executor == FE_EXEC_LLM || job->classify)
		return pstrdup(job->req->url);	/* provider base_url: holds no secret */
	if (spec)
		url = FeJsonbMemberStr(spec, "url");
	return url ? url : (fe_nlu_url ? fe_nlu_url : "");
}

static char *
fe_headers_json(FeHttpRequest *r)
{
	StringInfoData b;
	char	   *line = r->headers_out.data;
	bool		first = true;

	initStringInfo(&b);
	appendStringInfoChar(&b, '{');
	while (line && *line)
	{
		char	   *nl = strchr(line, '\n');
		char	   *colon = strchr(line, ':');

		if (nl == NULL)
			break;
		if (colon && colon < nl)
		{
			appendStringInfo(&b, "%s%s: %s", first ? "" : ", ",
							 FeJsonQuote(pnstrdup(line, colon - line)),
							 FeJsonQuote(pnstrdup(colon + 1, nl - colon - 1)));
			first = false;
		}
		line = nl + 1;
	}
	appendStringInfoChar(&b, '}');
	return b.data;
}

static char *
fe_timings_json(FeHttpRequest *r)
{
	return psprintf("{\"sent_at\": %s, \"connect_ms\": %.3f, \"ttfb_ms\": %.3f, \"total_ms\": %.3f}",
					FeJsonQuote(FeHttpWireTime(r)), r->connect_us / 1000.0,
					r->ttfb_us / 1000.0, r->total_us / 1000.0);
}

/* Body as JSON when it parses, else as a JSON string. */
static char *
fe_body_json(FeHttpRequest *r, Jsonb **parsed)
{
	Jsonb	   *j = NULL;
	char	   *p = r->body_out.data;

	while (*p == ' ' || *p == '\n' || *p == '\r' || *p == '\t')
		p++;
	if (*p == '{' || *p == '[' || *p == '"' || (*p >= '0' && *p <= '9') || *p == '-' ||
		strncmp(p, "true", 4) == 0 || strncmp(p, "false", 5) == 0 || strncmp(p, "null", 4) == 0)
		j = fe_try_parse(r->body_out.data);
	if (parsed)
		*parsed = j;
	if (j)
		return FeJsonbToText(j);
	if (pg_verifymbstr(r->body_out.data, r->body_out.len, true))
		return FeJsonQuote(r->body_out.data);
	return FeJsonQuote("(binary response body)");
}

static bool
fe_ok(FeHttpRequest *r)
{
	return r->error == NULL && r->status >= 200 && r->status < 300;
}

/* Why a request failed, in one line, without secrets. */
static char *
fe_why(FeJob *job)
{
	FeHttpRequest *r = job->req;

	if (r->error)
		return psprintf("%s %s failed: %s", r->method, fe_public_url(job), r->error);
	return psprintf("%s %s returned HTTP %ld: %.200s", r->method, fe_public_url(job),
					r->status, pg_verifymbstr(r->body_out.data, r->body_out.len, true)
					? r->body_out.data : "(binary)");
}

static void
fe_complete(FeJob *job, const char *output, const char *error)
{
	if (output && !fe_is_json(output))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_TEXT_REPRESENTATION),
				 errmsg("the output of step %d is not valid JSON", job->seq)));
	(void) FeEngineStepCompleteClaimed(&job->run, job->seq, job->attempts, output, error);
}

/*
 * An attempt failed.  Retry after an exponential backoff with jitter, or,
 * when attempts are used up (or retrying cannot help), fail the step,
 * which raises the "error" event of the run.
 */
static void
fe_attempt_failed(FeJob *job, const char *why, bool retryable)
{
	if (retryable && job->attempts < job->max_attempts)
	{
		double		delay = (double) job->backoff_ms * pow(2.0, job->attempts - 1);

		delay = Min(delay, 3600000.0);
		delay *= 0.5 + pg_prng_double(&pg_global_prng_state) / 2.0;
		FeCatalogRetryStep(&job->run, job->seq, (int) delay,
						   psprintf("{\"message\": %s, \"attempt\": %d}", FeJsonQuote(why),
									job->attempts));
		return;
	}
	fe_complete(job, NULL, job->attempts > 1
				? psprintf("%s (after %d attempts)", why, job->attempts) : why);
}

/* Record an LLM response's usage; returns the parsed response. */
static Jsonb *
fe_llm_usage(FeJob *job, Jsonb *resp, int64 *in, int64 *out)
{
	FeProvider *p = fe_current_provider(job);
	Jsonb	   *usage = fe_sub(resp, "usage");
	char	   *model = FeJsonbMemberStr(resp, "model");

	*in = (int64) fe_get_num(usage, "prompt_tokens", 0);
	*out = (int64) fe_get_num(usage, "completion_tokens", 0);
	FeCatalogAddUsage(&job->run, job->seq, p->name, model ? model : p->model, *in, *out,
					  (*in * p->cost_in_per_1k + *out * p->cost_out_per_1k) / 1000.0);
	return usage;
}

/*
 * An llm (or nlu-fallback) response.  A bad response moves on to the next
 * provider; content that breaks the schema is a failed attempt.
 */
static void
fe_settle_llm(FeJob *job)
{
	FeHttpRequest *r = job->req;
	FeProvider *p = fe_current_provider(job);
	Jsonb	   *resp = NULL;
	Jsonb	   *content_json = NULL;
	char	   *content = NULL;
	char	   *why = NULL;
	int64		tin = 0,
				tout = 0;

	if (!fe_ok(r))
		why = fe_why(job);
	else if ((resp = fe_try_parse(r->body_out.data)) == NULL)
		why = psprintf("provider returned a body that is not JSON: %.200s", r->body_out.data);
	else
	{
		JsonbValue	v;
		Jsonb	   *choice;

		(void) fe_llm_usage(job, resp, &tin, &tout);
		if (FeJsonbMember(resp, "choices", &v) && v.type == jbvBinary &&
			JsonContainerIsArray(v.val.binary.data) && JsonContainerSize(v.val.binary.data) > 0)
		{
			JsonbValue *c = getIthJsonbValueFromContainer(v.val.binary.data, 0);

			choice = c ? JsonbValueToJsonb(c) : NULL;
			content = FeJsonbMemberStr(fe_sub(choice, "message"), "content");
		}
		if (content == NULL)
			why = "the response has no choices[0].message.content";
	}
	if (why)
	{
		appendStringInfo(&job->failures, "%s%s: %s", job->failures.len ? "; " : "", p->name, why);
		if (job->provider + 1 < list_length(job->providers))
		{
			MemoryContext old = MemoryContextSwitchTo(job->mcxt);

			job->provider++;
			fe_build_llm(job, fe_current_provider(job),
						 job->classify ? fe_nlu_messages(job) : fe_llm_messages(job));
			MemoryContextSwitchTo(old);
			job->again = true;
			return;
		}
		if (job->nlu_output)
		{
			fe_complete(job, job->nlu_output, NULL);
			return;
		}
		fe_attempt_failed(job, psprintf("every llm provider failed: %s", job->failures.data), true);
		return;
	}

	/* the content: JSON when the step asked for it */
	{
		Jsonb	   *schema = fe_sub(job->input, "schema");
		Jsonb	   *rf = fe_sub(job->input, "response_format");
		char	   *schema_why = NULL;

		if (schema == NULL && rf)
		{
			Jsonb	   *js = fe_sub(rf, "json_schema");

			schema = js ? fe_sub(js, "schema") : NULL;
		}
		if (schema || rf || job->classify)
		{
			content_json = fe_try_parse(content);
			if (content_json == NULL)
				schema_why = "the content is not JSON";
			else if (schema && !FeSchemaValidate(schema, content_json, &schema_why))
				;
			else if (job->classify && FeJsonbMemberStr(content_json, "intent") == NULL)
				schema_why = "the classification has no string \"intent\"";
		}
		if (schema_why)
		{
			fe_attempt_failed(job, psprintf("provider %s returned content that does not match the schema: %s",
											p->name, schema_why), true);
			return;
		}
	}
	if (job->classify)
	{
		char	   *entities = fe_get_json(content_json, "entities");

		fe_complete(job, psprintf("{\"intent\": %s, \"entities\": %s, \"confidence\": %g, "
								  "\"source\": \"llm\", \"provider\": %s, \"classifier\": %s}",
								  FeJsonQuote(FeJsonbMemberStr(content_json, "intent")),
								  entities ? entities : "{}",
								  fe_get_num(content_json, "confidence", 1.0),
								  FeJsonQuote(p->name),
								  job->nlu_output ? job->nlu_output : "null"), NULL);
		return;
	}
	{
		char	   *model = FeJsonbMemberStr(resp, "model");
		Jsonb	   *choice = NULL;
		JsonbValue	v;
		char	   *finish = NULL;

		if (FeJsonbMember(resp, "choices", &v) && v.type == jbvBinary)
		{
			JsonbValue *c = getIthJsonbValueFromContainer(v.val.binary.data, 0);

			choice = c ? JsonbValueToJsonb(c) : NULL;
			finish = FeJsonbMemberStr(choice, "finish_reason");
		}
		fe_complete(job, psprintf("{\"content\": %s, \"json\": %s, \"provider\": %s, \"model\": %s, "
								  "\"usage\": {\"prompt_tokens\": " INT64_FORMAT ", \"completion_tokens\": " INT64_FORMAT "}, "
								  "\"finish_reason\": %s, \"timings\": %s}",
								  FeJsonQuote(content),
								  content_json ? FeJsonbToText(content_json) : "null",
								  FeJsonQuote(p->name), FeJsonQuote(model ? model : p->model),
								  tin, tout, finish ? FeJsonQuote(finish) : "null",
								  fe_timings_json(r)), NULL);
	}
}

/* A classifier response of an nlu step. */
static void
fe_settle_nlu(FeJob *job)
{
	FeHttpRequest *r = job->req;
	Jsonb	   *resp = fe_ok(r) ? fe_try_parse(r->body_out.data) : NULL;
	char	   *intent = resp ? FeJsonbMemberStr(resp, "intent") : NULL;
	double		threshold = fe_get_num(job->input, "threshold", 0.7);
	double		confidence = resp ? fe_get_num(resp, "confidence", 0) : 0;

	if (intent)
	{
		char	   *entities = fe_get_json(resp, "entities");
		MemoryContext old = MemoryContextSwitchTo(job->mcxt);

		job->nlu_output = psprintf("{\"intent\": %s, \"entities\": %s, \"confidence\": %g, "
								   "\"source\": \"nlu\", \"below_threshold\": %s}",
								   FeJsonQuote(intent), entities ? entities : "{}", confidence,
								   confidence < threshold ? "true" : "false");
		MemoryContextSwitchTo(old);
		if (confidence >= threshold || job->providers == NIL)
		{
			fe_complete(job, job->nlu_output, NULL);
			return;
		}
	}
	else
	{
		char	   *why = !fe_ok(r) ? fe_why(job)
			: psprintf("classifier %s returned no string \"intent\": %.200s",
					   fe_public_url(job), r->body_out.data);

		if (job->providers == NIL)
		{
			fe_attempt_failed(job, why, true);
			return;
		}
		appendStringInfo(&job->failures, "classifier: %s", why);
	}
	/* low confidence, or no classifier answer: the llm classifies */
	{
		MemoryContext old = MemoryContextSwitchTo(job->mcxt);

		job->classify = true;
		job->provider = 0;
		fe_build_llm(job, fe_current_provider(job), fe_nlu_messages(job));
		MemoryContextSwitchTo(old);
		job->again = true;
	}
}

static void
fe_settle_http(FeJob *job)
{
	FeHttpRequest *r = job->req;

	if (fe_ok(r))
	{
		char	   *body = fe_body_json(r, NULL);

		fe_complete(job, psprintf("{\"status\": %ld, \"headers\": %s, \"body\": %s, "
								  "\"attempts\": %d, \"timings\": %s}",
								  r->status, fe_headers_json(r), body, job->attempts,
								  fe_timings_json(r)), NULL);
		return;
	}
	/* a response over the size cap will not shrink: do not retry it */
	fe_attempt_failed(job, fe_why(job), !r->too_large);
}

/* Record a finished request (in a subtransaction of the record transaction). */
static Datum
fe_settle(void *arg)
{
	FeJob	   *job = (FeJob *) arg;

	job->again = false;
	/*
	 * A stale result (run cancelled, step completed elsewhere, lease lapsed
	 * and re-claimed) is dropped.  A successful http result is checked by
	 * the engine as it records it; anything else is checked here first.
	 */
	if (!((job->executor == FE_EXEC_HTTP || job->executor == FE_EXEC_TOOL) && fe_ok(job->req)) &&
		!FeCatalogStepClaimed(&job->run, job->seq, job->attempts))
		return (Datum) 0;
	if (job->req->too_large && job->executor != FE_EXEC_HTTP && job->executor != FE_EXEC_TOOL)
	{
		fe_attempt_failed(job, fe_why(job), false);
		return (Datum) 0;
	}
	if (job->executor == FE_EXEC_LLM || job->classify)
		fe_settle_llm(job);
	else if (job->executor == FE_EXEC_NLU)
		fe_settle_nlu(job);
	else
		fe_settle_http(job);
	return (Datum) 0;
}

/* The step could not even be sent (bad input, a missing secret): fail it. */
static Datum
fe_fail_unsendable(void *arg)
{
	FeJob	   *job = (FeJob *) arg;

	fe_complete(job, NULL, job->failures.data);
	return (Datum) 0;
}

static Datum
fe_fail_directly(void *arg)
{
	FeJob	   *job = (FeJob *) arg;

	FeCatalogFailRun(&job->run, job->seq, job->failures.data);
	return (Datum) 0;
}

static char *
fe_error_text(ErrorData *e)
{
	return psprintf("%s%s%s", e->message, e->detail ? ": " : "", e->detail ? e->detail : "");
}

/*
 * A result that could not be recorded (the run's later steps raised, the
 * run row is damaged, ...): fail the step through the engine, so that the
 * run's "error" transition still applies; failing that, fail the run
 * directly.  Never raises: the worker goes on.
 */
static void
fe_poison(FeJob *job, ErrorData *e)
{
	Datum		d;
	ErrorData  *e2 = NULL;
	char	   *msg = psprintf("the worker could not record the result of step %d: %s",
							   job->seq, fe_error_text(e));

	int			mark[FE_DEFER_MARKS];

	resetStringInfo(&job->failures);
	appendStringInfoString(&job->failures, msg);
	FeCatalogDeferMark(mark);
	if (FeGuarded(fe_fail_unsendable, job, &d, &e2))
		return;
	FeCatalogDeferUndo(mark);
	ereport(WARNING,
			(errmsg("flow_engine worker: failing run %s directly: %s",
					DatumGetCString(DirectFunctionCall1(uuid_out, UUIDPGetDatum(&job->run))),
					msg),
			 errdetail_internal("Recording the failure through the flow failed too: %s",
								e2->message)));
	resetStringInfo(&job->failures);
	appendStringInfo(&job->failures, "{\"sqlstate\": \"XX000\", \"message\": %s}",
					 FeJsonQuote(msg));
	if (!FeGuarded(fe_fail_directly, job, &d, &e2))
		ereport(WARNING,
				(errmsg("flow_engine worker: could not fail the run: %s", e2->message)));
}

/* ---------------------------------------------------------------------
 * Transactions of the loop
 * ---------------------------------------------------------------------
 */
static void
fe_xact_begin(const char *activity)
{
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
	pgstat_report_activity(STATE_RUNNING, activity);
}

static void
fe_xact_end(void)
{
	PopActiveSnapshot();
	CommitTransactionCommand();
	pgstat_report_stat(false);
	pgstat_report_activity(STATE_IDLE, NULL);
}

/* Abort the current transaction after an error escaped; log it. */
static void
fe_xact_abort(const char *what)
{
	ErrorData  *e;

	MemoryContextSwitchTo(fe_loop_cxt);
	e = CopyErrorData();
	FlushErrorState();
	AbortCurrentTransaction();
	ereport(WARNING,
			(errmsg("flow_engine worker: %s failed: %s", what, e->message),
			 e->detail ? errdetail_internal("%s", e->detail) : 0));
	pgstat_report_activity(STATE_IDLE, NULL);
}

/* Show in pg_stat_activity.query how many requests are on the wire. */
static void
fe_report_waiting(void)
{
	char		activity[64];
	int			n = FeHttpInflight();

	snprintf(activity, sizeof(activity), "waiting: %d request%s in flight", n, n == 1 ? "" : "s");
	pgstat_report_activity(STATE_IDLE, activity);
}

static FeJob *
fe_job_new(FeClaim *c, List *providers)
{
	MemoryContext mcxt = AllocSetContextCreate(fe_jobs_cxt, "flow_engine job",
											   ALLOCSET_SMALL_SIZES);
	MemoryContext old = MemoryContextSwitchTo(mcxt);
	FeJob	   *job = palloc0(sizeof(FeJob));
	char	   *run = DatumGetCString(DirectFunctionCall1(uuid_out, UUIDPGetDatum(&c->run)));
	Jsonb	   *retry;
	ListCell   *lc;

	job->mcxt = mcxt;
	memcpy(&job->run, &c->run, sizeof(pg_uuid_t));
	job->seq = c->seq;
	job->attempts = c->attempts;
	job->executor = fe_executor(c->executor);
	job->state = pstrdup(c->state);
	job->input = c->input ? DatumGetJsonbPCopy(JsonbPGetDatum(c->input))
		: fe_parse("{}");
	job->idempotency_key = psprintf("%s-%d", run, c->seq);
	initStringInfo(&job->failures);
	{
		Jsonb	   *spec = job->executor == FE_EXEC_TOOL ? fe_sub(job->input, "request") : job->input;

		job->timeout_ms = (int) Min(fe_get_num(spec, "timeout_ms", fe_http_timeout_ms), 3600000.0);
		retry = fe_sub(spec, "retry");
	}
	job->timeout_ms = Max(job->timeout_ms, 1);	/* never "forever" */
	job->max_attempts = (int) Min(Max(fe_get_num(retry, "max_attempts", fe_retry_max_attempts), 1), 100);
	job->backoff_ms = (int) Min(Max(fe_get_num(retry, "backoff_ms", fe_retry_backoff_ms), 0), 3600000);
	if (job->executor == FE_EXEC_LLM || job->executor == FE_EXEC_NLU)
	{
		Jsonb	   *only = fe_sub(job->input, "providers");

		foreach(lc, providers)
		{
			FeProvider *p = (FeProvider *) lfirst(lc);
			FeProvider *mine;

			if (only && !JB_ROOT_IS_SCALAR(only))
			{
				JsonbValue	want;

				want.type = jbvString;
				want.val.string.val = p->name;
				want.val.string.len = strlen(p->name);
				if (findJsonbValueFromContainer(&only->root, JB_FARRAY, &want) == NULL)
					continue;
			}
			mine = palloc(sizeof(FeProvider));
			*mine = *p;
			mine->name = pstrdup(p->name);
			mine->base_url = pstrdup(p->base_url);
			mine->model = pstrdup(p->model);
			mine->api_key = p->api_key ? pstrdup(p->api_key) : NULL;
			job->providers = lappend(job->providers, mine);
		}
	}
	MemoryContextSwitchTo(old);
	return job;
}

static Datum
fe_build_guarded(void *arg)
{
	FeJob	   *job = (FeJob *) arg;
	MemoryContext old = MemoryContextSwitchTo(job->mcxt);

	fe_build_first(job);
	MemoryContextSwitchTo(old);
	return (Datum) 0;
}

static Datum
fe_timer_guarded(void *arg)
{
	(void) FeEngineFireTimer((pg_uuid_t *) arg);
	return (Datum) 0;
}

/* What the loop knows after a claim. */
typedef struct FeDue
{
	TimestampTz step;
	TimestampTz lease;
	TimestampTz timer;
	bool		installed;
	bool		starved;		/* claimed a full batch: more may be due */
} FeDue;

static bool fe_recovered = false;

/*
 * The claim transaction.  Returns the jobs whose requests are ready to go
 * on the wire; they are handed to curl after the commit.
 */
static List *
fe_claim(int capacity, FeDue *due)
{
	List	   *volatile ready = NIL;
	List	   *volatile jobs = NIL;

	memset(due, 0, sizeof(FeDue));
	fe_xact_begin("flow_engine: claiming due steps");
	PG_TRY();
	{
		ListCell   *lc;
		TimestampTz now = GetCurrentTimestamp();

		due->installed = FeCatalogExtensionExists();
		if (due->installed)
		{
			List	   *claims;
			List	   *providers = NIL;
			int			limit = Min(capacity, 1000);

			if (!fe_recovered)
			{
				uint64		n = FeCatalogReleaseSteps(fe_recover_all() ? DT_NOEND : now);

				if (n > 0)
					ereport(LOG,
							(errmsg("flow_engine worker: sending %llu interrupted steps again",
									(unsigned long long) n)));
				fe_recovered = true;
			}
			else
				(void) FeCatalogReleaseSteps(now);

			foreach(lc, FeCatalogDueTimers(200))
			{
				Datum		d;
				ErrorData  *e = NULL;

				if (!FeGuarded(fe_timer_guarded, lfirst(lc), &d, &e))
					ereport(WARNING,
							(errmsg("flow_engine worker: could not fire a timer: %s", e->message)));
			}

			claims = limit > 0 ? FeCatalogClaimSteps(limit, fe_http_timeout_ms, 8,
													 fe_lease_margin_ms) : NIL;
			due->starved = limit > 0 && list_length(claims) == limit;
			foreach(lc, claims)
			{
				FeClaim    *c = (FeClaim *) lfirst(lc);

				FeJob	   *job;
				MemoryContext old;

				if (providers == NIL &&
					(strcmp(c->executor, "llm") == 0 || strcmp(c->executor, "nlu") == 0))
					providers = FeCatalogProviders();
				job = fe_job_new(c, providers);
				/* lists that outlive the transaction live in the loop's context */
				old = MemoryContextSwitchTo(fe_loop_cxt);
				jobs = lappend(jobs, job);
				MemoryContextSwitchTo(old);
			}
			foreach(lc, jobs)
			{
				FeJob	   *job = (FeJob *) lfirst(lc);
				Datum		d;
				ErrorData  *e = NULL;

				if (FeGuarded(fe_build_guarded, job, &d, &e))
				{
					MemoryContext old = MemoryContextSwitchTo(fe_loop_cxt);

					ready = lappend(ready, job);
					MemoryContextSwitchTo(old);
					continue;
				}
				jobs = foreach_delete_current(jobs, lc);
				appendStringInfo(&job->failures, "the %s step could not be sent: %s",
								 job->executor == FE_EXEC_TOOL ? "tool" :
								 job->executor == FE_EXEC_LLM ? "llm" :
								 job->executor == FE_EXEC_NLU ? "nlu" : "http",
								 fe_error_text(e));
				if (!FeGuarded(fe_fail_unsendable, job, &d, &e))
					fe_poison(job, e);
				MemoryContextDelete(job->mcxt);
			}
			if (!due->starved)
				FeCatalogNextDue(&due->step, &due->lease, &due->timer);
		}
		fe_xact_end();
	}
	PG_CATCH();
	{
		ListCell   *lc;

		fe_xact_abort("claiming steps");
		foreach(lc, jobs)
			MemoryContextDelete(((FeJob *) lfirst(lc))->mcxt);
		ready = NIL;
		due->step = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), 1000);
	}
	PG_END_TRY();
	return ready;
}

/*
 * The record transaction: settle every finished request.  Returns the
 * jobs that need another request (the next provider).
 */
static List *
fe_record(List *done)
{
	List	   *volatile again = NIL;
	ListCell   *lc;

	if (done == NIL)
		return NIL;
	fe_xact_begin("flow_engine: recording results");
	PG_TRY();
	{
		/* the runs' writes go out per table, in a few set-based statements */
		FeCatalogDeferBegin();
		foreach(lc, done)
		{
			FeHttpRequest *r = (FeHttpRequest *) lfirst(lc);
			FeJob	   *job = (FeJob *) r->owner;
			Datum		d;
			ErrorData  *e = NULL;
			int			mark[FE_DEFER_MARKS];

			FeCatalogDeferMark(mark);
			if (!FeGuarded(fe_settle, job, &d, &e))
			{
				FeCatalogDeferUndo(mark);	/* drop what the failed run buffered */
				job->again = false;
				fe_poison(job, e);
			}
			if (job->again)
			{
				MemoryContext old = MemoryContextSwitchTo(fe_loop_cxt);

				again = lappend(again, job);
				MemoryContextSwitchTo(old);
			}
		}
		FeCatalogDeferFlush();
		FeCatalogDeferEnd();
		fe_xact_end();
	}
	PG_CATCH();
	{
		/* the steps stay claimed; their leases lapse and they are sent again */
		FeCatalogDeferEnd();
		fe_xact_abort("recording results");
		again = NIL;
	}
	PG_END_TRY();
	foreach(lc, done)
	{
		FeJob	   *job = (FeJob *) ((FeHttpRequest *) lfirst(lc))->owner;

		if (!list_member_ptr(again, job))
			MemoryContextDelete(job->mcxt);
	}
	return again;
}

static void
fe_send(List *jobs)
{
	ListCell   *lc;

	foreach(lc, jobs)
		FeHttpStart(((FeJob *) lfirst(lc))->req);
}

/* ---------------------------------------------------------------------
 * The loop
 * ---------------------------------------------------------------------
 */
static long
fe_ms_until(TimestampTz t, TimestampTz now)
{
	if (t <= now)
		return 0;
	return (long) Min((t - now) / 1000 + 1, (int64) INT_MAX);
}

/*
 * How many steps to claim now.  Claims go in batches: with requests in
 * flight, wait until a quarter of the window is free rather than claiming
 * a few steps every turn.
 */
static int
fe_capacity(void)
{
	int			free_slots = fe_max_inflight - FeHttpInflight();

	if (FeHttpInflight() > 0 && free_slots < Max(fe_max_inflight / 4, 1))
		return 0;
	return free_slots;
}

void
FeWorkerMain(Datum arg)
{
	bool		work = true;
	FeDue		due = {0};

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();
	BackgroundWorkerInitializeConnection(fe_database, NULL, 0);
	pgstat_report_appname("flow_engine worker");

	fe_worker_index = DatumGetInt32(arg);
	SpinLockAcquire(&fe_shared->mutex);
	fe_shared->latch[fe_worker_index] = MyLatch;
	SpinLockRelease(&fe_shared->mutex);
	before_shmem_exit(fe_unpublish, (Datum) 0);

	fe_loop_cxt = AllocSetContextCreate(TopMemoryContext, "flow_engine worker loop",
										ALLOCSET_DEFAULT_SIZES);
	fe_jobs_cxt = AllocSetContextCreate(TopMemoryContext, "flow_engine jobs",
										ALLOCSET_DEFAULT_SIZES);
	FeHttpInit();
	ereport(LOG,
			(errmsg("flow_engine worker started for database \"%s\"", fe_database)));

	for (;;)
	{
		TimestampTz now;
		long		timeout;
		int			capacity;

		MemoryContextSwitchTo(fe_loop_cxt);
		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
			FeHttpConfigure();
		}

		capacity = fe_capacity();
		now = GetCurrentTimestamp();
		if ((work && capacity > 0) ||
			(due.step && due.step <= now && capacity > 0) ||
			(due.lease && due.lease <= now) ||
			(due.timer && due.timer <= now))
		{
			work = false;
			fe_send(fe_claim(capacity, &due));
			if (due.starved)
				work = true;
			capacity = fe_capacity();
		}

		/* sleep until something is due; a commit sets the latch sooner */
		now = GetCurrentTimestamp();
		timeout = due.installed ? fe_idle_timeout_ms : Max(fe_idle_timeout_ms, 1000);
		if (work && capacity > 0)
			timeout = 0;
		if (due.step && capacity > 0)
			timeout = Min(timeout, fe_ms_until(due.step, now));
		if (due.lease)
			timeout = Min(timeout, fe_ms_until(due.lease, now));
		if (due.timer)
			timeout = Min(timeout, fe_ms_until(due.timer, now));
		fe_report_waiting();
		if (FeHttpWait(timeout))
		{
			ResetLatch(MyLatch);
			work = true;
		}
		CHECK_FOR_INTERRUPTS();

		{
			List	   *done = FeHttpTakeDone();

			fe_send(fe_record(done));
			list_free(done);
		}
		MemoryContextReset(fe_loop_cxt);
	}
}
