/*-------------------------------------------------------------------------
 *
 * module.c
 *	  Library entry point: GUCs, and small helpers shared by every file.
 *
 * flow_engine is meant for shared_preload_libraries (the worker, which
 * arrives with the worker issue, needs it), but every SQL function also
 * works when the library is loaded on first use.
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
	MarkGUCPrefixReserved("flow_engine");
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
