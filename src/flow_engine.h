/*-------------------------------------------------------------------------
 *
 * flow_engine.h
 *	  Types and cross-file entry points of the flow_engine extension.
 *
 * The life of a step, file by file:
 *	  definition.c	parse and validate a definition into an FeFlow
 *	  expr.c		Duktape expressions and {{ }} / ${ } templates
 *	  engine.c		advance a run: enter, act, decide, leave
 *	  catalog.c		every SPI access to the extension's tables
 *	  schema.c		JSON Schema checks of tool parameters and LLM output
 *	  worker.c		the background worker: claim, send, record, timers
 *	  http.c		libcurl multi, the only file that includes curl
 *	  sql_api.c		thin PG_FUNCTION_INFO_V1 wrappers
 *	  module.c		_PG_init and GUCs
 *
 * Memory: an FeFlow lives in its own context under CacheMemoryContext and
 * is shared by every run of that flow version in this backend.  Everything
 * belonging to one call (run state, batches of rows) is palloc'd in the
 * caller's memory context and dies with it.
 *
 *-------------------------------------------------------------------------
 */
#ifndef FLOW_ENGINE_H
#define FLOW_ENGINE_H

#include "postgres.h"

#include "access/xact.h"
#include "nodes/pg_list.h"
#include "utils/jsonb.h"
#include "utils/timestamp.h"
#include "utils/uuid.h"

#define FE_CHANNEL			"flow_engine"
#define FE_MAX_NAME			63		/* longest flow, state or event name */

/* ---------- GUCs (module.c) ---------- */
extern int	fe_max_transitions;
extern int	fe_expr_memory_limit_kb;
extern char *fe_database;
extern int	fe_idle_timeout_ms;
extern int	fe_max_inflight;
extern int	fe_workers;

#define FE_MAX_WORKERS 16
extern int	fe_lease_margin_ms;
extern int	fe_http_timeout_ms;
extern int	fe_http_connect_timeout_ms;
extern int	fe_http_max_response_kb;
extern int	fe_http_max_host_connections;
extern int	fe_retry_max_attempts;
extern int	fe_retry_backoff_ms;
extern char *fe_nlu_url;

/* ---------- expressions (expr.c) ---------- */

/*
 * A template is a JSON value whose strings may hold {{ expr }} or ${ expr }
 * placeholders.  Literal parts are kept as JSON text; each placeholder is an
 * expression id, compiled once per flow version per backend.
 */
typedef enum FeTmplKind
{
	FE_TMPL_LITERAL,			/* JSON text, no placeholders inside */
	FE_TMPL_EXPR,				/* a string that is exactly one placeholder */
	FE_TMPL_STRING,				/* a string mixing text and placeholders */
	FE_TMPL_OBJECT,
	FE_TMPL_ARRAY
} FeTmplKind;

typedef struct FeTmpl
{
	FeTmplKind	kind;
	char	   *json;			/* LITERAL: JSON text */
	int			expr;			/* EXPR: expression id */
	int			nparts;			/* STRING: parts; OBJECT/ARRAY: members */
	char	  **texts;			/* STRING: literal text of each part, or NULL */
	int		   *exprs;			/* STRING: expression id of each part, or -1 */
	char	  **keys;			/* OBJECT: member names */
	struct FeTmpl **items;		/* OBJECT/ARRAY: member templates */
} FeTmpl;

/* Where an expression came from, for error messages. */
typedef struct FeExprSource
{
	char	   *text;
} FeExprSource;

/* Result of evaluating something in the sandbox. */
typedef struct FeEvalResult
{
	bool		ok;
	char	   *json;			/* result as JSON text (templates) */
	bool		truth;			/* result as a boolean (conditions) */
	char	   *error;			/* the JavaScript error, when !ok */
	int			failed_expr;	/* expression id at fault, or -1 */
} FeEvalResult;

extern char *FeExprCheckSyntax(const char *expr);
extern char *FeExprCompileCheck(const char *expr);
extern char *FeExprCompileOnly(const char *expr);
extern FeTmpl *FeTmplParse(Jsonb *value, List **exprs, char **error);

/* An evaluation scope: one run's context during one engine call. */
extern void FeExprBindFlow(const char *cache_key, List *exprs);
extern void FeExprForgetFlow(const char *cache_key);
extern bool FeExprScopeOpen(const char *cache_key, const char *context_json,
							char **error);
extern void FeExprScopeSetEvent(const char *payload_json);
extern FeEvalResult FeExprEvalCondition(int expr);
extern FeEvalResult FeExprEvalTemplate(FeTmpl *t);
extern bool FeExprAssignJson(const char *name, const char *json, char **error);
extern char *FeExprScopeContext(char **error);
extern void FeExprScopeClose(void);

/* ---------- definitions (definition.c) ---------- */

typedef enum FeExecutor
{
	FE_EXEC_SET,
	FE_EXEC_RESPOND,
	FE_EXEC_SQL,
	FE_EXEC_HANDOFF,
	FE_EXEC_HTTP,
	FE_EXEC_LLM,
	FE_EXEC_NLU,
	FE_EXEC_TOOL
} FeExecutor;

#define FE_EXEC_IS_ASYNC(e) ((e) >= FE_EXEC_HTTP)

typedef enum FePhase
{
	FE_PHASE_ENTRY,
	FE_PHASE_ACTIONS,
	FE_PHASE_EXIT
} FePhase;

typedef struct FeAction
{
	FeExecutor	executor;
	const char *executor_name;
	FeTmpl	   *config;			/* the whole config, templated */
	char	   *output;			/* context variable, or NULL */
	/* executor-specific, resolved at parse time */
	int			nset;			/* set: variables and their templates */
	char	  **set_names;
	FeTmpl	  **set_values;
	char	   *sql_function;	/* sql: regprocedure text */
	FeTmpl	   *sql_args;		/* sql: templated args (or NULL) */
	FeTmpl	   *respond_text;	/* respond: templated text */
} FeAction;

typedef struct FeCondition
{
	int			expr;
	char	   *event;
} FeCondition;

typedef struct FeTransition
{
	char	   *event;
	int			target;			/* state index */
} FeTransition;

/* A state that asks for a value, checks the answer and re-asks. */
typedef struct FeElicit
{
	char	   *variable;		/* where a valid answer goes */
	FeTmpl	   *prompt;			/* asked on entry (a respond action) */
	FeTmpl	   *retry_prompt;	/* asked after an invalid answer */
	int			check;			/* expression id: is the answer valid? */
	FeTmpl	   *answer;			/* the answer: the message text, trimmed */
	FeTmpl	   *attempts;		/* invalid answers so far in this state */
	int			max_attempts;
} FeElicit;

typedef struct FeState
{
	char	   *name;
	char	   *type;
	bool		final;
	int			nactions[3];	/* per FePhase */
	FeAction   *actions[3];
	int			nconditions;
	FeCondition *conditions;
	int			ntransitions;
	FeTransition *transitions;
	int			timeout_ms;		/* 0 = none; fired by the worker */
	bool		declares_transitions;	/* even if some were invalid */
	FeElicit   *elicit;			/* or NULL */
} FeState;

typedef struct FeFlow
{
	char	   *name;
	int			version;
	uint64		xmin;			/* of the definition row, for cache checks */
	char		cache_key[FE_MAX_NAME + 16];
	MemoryContext mcxt;
	int			nstates;
	FeState    *states;
	int			initial;
	List	   *exprs;			/* FeExprSource *, indexed by expression id */
} FeFlow;

typedef struct FeProblem
{
	char	   *path;
	char	   *severity;		/* "error" or "warning" */
	char	   *message;
} FeProblem;

extern FeFlow *FeDefinitionParse(Jsonb *def, List **problems);
extern bool FeProblemsHaveErrors(List *problems);
extern int	FeFlowStateIndex(FeFlow *flow, const char *name);
extern FeTransition *FeStateTransition(FeState *st, const char *event);
extern char *FeStateAcceptedEvents(FeState *st);
extern FeFlow *FeFlowLoad(const char *name, int version, bool latest);

/* ---------- catalog (catalog.c) ---------- */

typedef struct FeStepRow
{
	int			seq;
	char	   *state;
	const char *phase;
	int			action;
	const char *executor;
	const char *status;
	char	   *input;			/* JSON text or NULL */
	char	   *output;
	char	   *error;
	TimestampTz started_at;
	TimestampTz finished_at;	/* 0 = NULL */
} FeStepRow;

typedef struct FeEventRow
{
	int			seq;
	char	   *event;
	const char *source;
	char	   *payload;		/* JSON text or NULL */
	const char *status;
	char	   *from_state;
	char	   *to_state;
} FeEventRow;

typedef struct FeMessageRow
{
	int			seq;
	const char *role;
	char	   *content;
} FeMessageRow;

/* The run as stored in flow_runs. */
typedef struct FeRunRow
{
	pg_uuid_t	id;
	char	   *flow;
	int			version;
	char	   *status;
	char	   *state;
	char	   *context;		/* JSON text */
	char	   *response;
	char	   *key;
	char	   *error;			/* JSON text or NULL */
	char	   *cursor;			/* JSON text or NULL */
	int			step_seq;
	int			event_seq;
	int			message_seq;
	int			queued_events;
	TimestampTz timeout_at;		/* 0 = no timer */
	char	   *session;		/* written at insert only */
} FeRunRow;

extern bool FeCatalogFetchDefinition(const char *name, int version, bool latest,
									 int *found_version, uint64 *xmin,
									 Jsonb **def);
extern int	FeCatalogStoreDefinition(const char *name, Jsonb *def);
extern bool FeCatalogLockRun(pg_uuid_t *id, FeRunRow *row);
extern void FeCatalogSetHandoff(pg_uuid_t *id, const char *handoff);
extern char *FeCatalogRunStatus(pg_uuid_t *id, bool *mine);
extern char *FeCatalogActiveSessionRun(const char *session);
extern void FeCatalogSaveRun(FeRunRow *row, bool insert, bool finished,
							 Jsonb **context_out);
extern void FeCatalogInsertSteps(pg_uuid_t *run, List *steps);
extern void FeCatalogInsertEvents(pg_uuid_t *run, List *events);
extern void FeCatalogInsertMessages(pg_uuid_t *run, List *messages);
extern bool FeCatalogStepPending(pg_uuid_t *run, int seq, int attempts, char **executor);
extern void FeCatalogFinishStep(pg_uuid_t *run, int seq, const char *status,
								const char *output, const char *error);
extern void FeCatalogCancelPending(pg_uuid_t *run);
extern bool FeCatalogNextQueuedEvent(pg_uuid_t *run, int *seq, char **event,
									 char **payload);
extern void FeCatalogConsumeEvent(pg_uuid_t *run, int seq, const char *status,
								  const char *from_state, const char *to_state);
typedef struct FeToolRow
{
	char	   *name;
	char	   *kind;			/* "http" or "sql" */
	Jsonb	   *parameters;
	Jsonb	   *config;
	uint64		xmin;
} FeToolRow;

extern bool FeCatalogFetchTool(const char *name, FeToolRow *tool);

/* the worker's queue */
typedef struct FeClaim
{
	pg_uuid_t	run;
	int			seq;
	char	   *executor;
	char	   *state;
	Jsonb	   *input;
	int			attempts;		/* including this one */
} FeClaim;

typedef struct FeProvider
{
	char	   *name;
	char	   *base_url;		/* without a trailing slash */
	char	   *model;
	char	   *api_key;		/* or NULL */
	double		cost_in_per_1k;
	double		cost_out_per_1k;
	int			timeout_ms;		/* 0 = the step's */
} FeProvider;

extern void FeCatalogDeferBegin(void);
extern void FeCatalogDeferEnd(void);
extern void FeCatalogDeferMark(int *mark);
extern void FeCatalogDeferUndo(int *mark);
extern void FeCatalogDeferFlush(void);
#define FE_DEFER_MARKS 5
extern bool FeCatalogExtensionExists(void);
extern List *FeCatalogClaimSteps(int limit, int default_timeout_ms, int chain, int margin_ms);
extern uint64 FeCatalogReleaseSteps(TimestampTz before);
extern void FeCatalogNextDue(TimestampTz *step, TimestampTz *lease, TimestampTz *timer);
extern List *FeCatalogDueTimers(int limit);
extern List *FeCatalogProviders(void);
extern char *FeCatalogSecret(const char *name);
extern bool FeCatalogStepClaimed(pg_uuid_t *run, int seq, int attempts);
extern void FeCatalogRetryStep(pg_uuid_t *run, int seq, int delay_ms, const char *error);
extern void FeCatalogAddUsage(pg_uuid_t *run, int seq, const char *provider, const char *model,
							  int64 tokens_in, int64 tokens_out, double cost);
extern void FeCatalogFailRun(pg_uuid_t *run, int seq, const char *error);
typedef Datum (*FeGuardedFn) (void *arg);
extern bool FeGuarded(FeGuardedFn fn, void *arg, Datum *result, ErrorData **error);
extern Jsonb *FeCatalogCallSql(const char *function, const char *args_json,
							   ErrorData **error);
#define FE_FUNCTION_OK		0
#define FE_FUNCTION_MISSING	1	/* may be created later: a warning */
#define FE_FUNCTION_BAD		2	/* malformed or wrong signature: an error */
extern int	FeCatalogCheckFunction(const char *function, char **error);

/* ---------- engine (engine.c) ---------- */

typedef struct FeRunResult
{
	pg_uuid_t	id;
	char	   *flow;
	int			version;
	char	   *status;
	char	   *state;
	Jsonb	   *context;
	char	   *response;
	char	   *error;			/* JSON text or NULL */
} FeRunResult;

extern FeRunResult *FeEngineExecute(const char *flow, Jsonb *input, const char *key,
									const char *session);
extern int	FeEngineMessage(pg_uuid_t *id, const char *role, const char *content,
							Jsonb *payload);
extern FeRunResult *FeEngineSend(pg_uuid_t *run, const char *event, Jsonb *payload);
extern FeRunResult *FeEngineCancel(pg_uuid_t *run);
extern FeRunResult *FeEngineStepComplete(pg_uuid_t *run, int step,
										 Jsonb *output, const char *error);
extern bool FeEngineStepCompleteClaimed(pg_uuid_t *run, int step, int attempts,
										const char *output, const char *error);
extern bool FeEngineFireTimer(pg_uuid_t *run);

/* ---------- JSON Schema subset (schema.c) ---------- */
extern bool FeSchemaValidate(Jsonb *schema, Jsonb *value, char **why);

/* ---------- the worker (worker.c) ---------- */
extern void FeWorkerSetup(void);

/* ---------- waiting for runs (wait.c) ---------- */

extern Size FeWaitShmemSize(void);
extern void FeWaitShmemInit(void);
extern void FeWaitSetup(void);
extern void FeWaitNoteRun(pg_uuid_t *id);
extern char *FeWaitRun(pg_uuid_t *id, int timeout_ms);
extern void FeWorkerWakeAtCommit(void);
extern PGDLLEXPORT void FeWorkerMain(Datum arg);

/* ---------- helpers shared by several files ---------- */
extern char *FeJsonQuote(const char *s);
extern char *FeJsonbToText(Jsonb *j);
extern bool FeJsonbMember(Jsonb *j, const char *key, JsonbValue *v);
extern char *FeJsonbMemberStr(Jsonb *j, const char *key);

#endif							/* FLOW_ENGINE_H */
