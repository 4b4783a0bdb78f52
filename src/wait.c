/*-------------------------------------------------------------------------
 *
 * wait.c
 *	  flow_wait(): block until a run is no longer running, without polling.
 *
 * A backend that waits for a run puts (run id, its latch) in its slot of a
 * shared array (one slot per backend, indexed by backend id).  Every
 * engine call that saves a run notes the run id in the transaction, but
 * only while some backend waits (a counter read without the lock, so the
 * common case costs nothing); when that transaction commits, a callback
 * registered once in _PG_init sets the latch of every backend waiting for
 * one of the noted runs.  The waiter then re-reads the run's status with a
 * new snapshot.
 *
 * Transactions and locks: the waiter holds no lock on the run while it
 * waits, and registers before it first reads the status, so a commit
 * between the read and the wait still sets its latch.  The slots are
 * guarded by a spinlock held only to copy a few bytes.  A waiter's
 * transaction must see other transactions' commits (READ COMMITTED), and
 * must not itself have changed the run: the worker could not claim the
 * run's step before that transaction commits.
 *
 *-------------------------------------------------------------------------
 */
#include "flow_engine.h"

#include "access/xact.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/shmem.h"
#include "storage/spin.h"
#include "utils/fmgrprotos.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

typedef struct FeWaiter
{
	bool		used;
	pg_uuid_t	run;
	Latch	   *latch;
} FeWaiter;

typedef struct FeWaiters
{
	slock_t		mutex;
	int			nwaiting;		/* used slots; read without the lock as a hint */
	int			nslots;
	FeWaiter	slots[FLEXIBLE_ARRAY_MEMBER];
} FeWaiters;

static FeWaiters *fe_waiters = NULL;
static List *fe_changed_runs = NIL;	/* pg_uuid_t *, in TopTransactionContext */
static int	fe_my_slot = -1;

Size
FeWaitShmemSize(void)
{
	return add_size(offsetof(FeWaiters, slots), mul_size(MaxBackends, sizeof(FeWaiter)));
}

/* Called from the shmem startup hook, with AddinShmemInitLock held. */
void
FeWaitShmemInit(void)
{
	bool		found;

	fe_waiters = ShmemInitStruct("flow_engine waiters", FeWaitShmemSize(), &found);
	if (!found)
	{
		SpinLockInit(&fe_waiters->mutex);
		fe_waiters->nwaiting = 0;
		fe_waiters->nslots = MaxBackends;
		memset(fe_waiters->slots, 0, mul_size(MaxBackends, sizeof(FeWaiter)));
	}
}

/* An engine call saved run `id`: wake its waiters when this transaction commits. */
void
FeWaitNoteRun(pg_uuid_t *id)
{
	MemoryContext old;
	pg_uuid_t  *copy;

	if (fe_waiters == NULL || fe_waiters->nwaiting == 0)
		return;
	old = MemoryContextSwitchTo(TopTransactionContext);
	copy = palloc(sizeof(pg_uuid_t));
	memcpy(copy, id, sizeof(pg_uuid_t));
	fe_changed_runs = lappend(fe_changed_runs, copy);
	MemoryContextSwitchTo(old);
}

static void
fe_wait_xact_callback(XactEvent event, void *arg)
{
	ListCell   *lc;
	int			i;

	if (event == XACT_EVENT_COMMIT || event == XACT_EVENT_PARALLEL_COMMIT)
	{
		foreach(lc, fe_changed_runs)
		{
			pg_uuid_t  *run = (pg_uuid_t *) lfirst(lc);

			for (i = 0; i < fe_waiters->nslots; i++)
			{
				Latch	   *latch = NULL;

				if (!fe_waiters->slots[i].used)
					continue;
				SpinLockAcquire(&fe_waiters->mutex);
				if (fe_waiters->slots[i].used &&
					memcmp(&fe_waiters->slots[i].run, run, sizeof(pg_uuid_t)) == 0)
					latch = fe_waiters->slots[i].latch;
				SpinLockRelease(&fe_waiters->mutex);
				if (latch)
					SetLatch(latch);
			}
		}
	}
	/* the list lived in TopTransactionContext, gone with the transaction */
	if (event == XACT_EVENT_COMMIT || event == XACT_EVENT_PARALLEL_COMMIT ||
		event == XACT_EVENT_ABORT || event == XACT_EVENT_PARALLEL_ABORT ||
		event == XACT_EVENT_PREPARE)
		fe_changed_runs = NIL;
}

/* Called once from _PG_init. */
void
FeWaitSetup(void)
{
	RegisterXactCallback(fe_wait_xact_callback, NULL);
}

static void
fe_wait_unregister(void)
{
	if (fe_my_slot < 0)
		return;
	SpinLockAcquire(&fe_waiters->mutex);
	fe_waiters->slots[fe_my_slot].used = false;
	fe_waiters->slots[fe_my_slot].latch = NULL;
	fe_waiters->nwaiting--;
	SpinLockRelease(&fe_waiters->mutex);
	fe_my_slot = -1;
}

/*
 * Wait up to timeout_ms until run `id` is no longer running.  Returns its
 * status then (or when the time is up).
 */
char *
FeWaitRun(pg_uuid_t *id, int timeout_ms)
{
	char	   *volatile status = NULL;
	TimestampTz deadline;

	if (fe_waiters == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("flow_wait() needs flow_engine in shared_preload_libraries"),
				 errhint("Add flow_engine to shared_preload_libraries and restart the server, or LISTEN on channel flow_engine instead.")));
	if (IsolationUsesXactSnapshot())
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("flow_wait() cannot run in a REPEATABLE READ or SERIALIZABLE transaction"),
				 errdetail("Its snapshot would never show the run's progress."),
				 errhint("Call flow_wait() in a READ COMMITTED transaction, such as an autocommitted statement.")));
	if (timeout_ms < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("timeout_ms must not be negative"),
				 errdetail("flow_wait() was called with timeout_ms = %d.", timeout_ms)));
	if (MyBackendId < 1 || MyBackendId > fe_waiters->nslots)
		elog(ERROR, "backend id %d has no wait slot", MyBackendId);

	deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), timeout_ms);
	SpinLockAcquire(&fe_waiters->mutex);
	fe_my_slot = MyBackendId - 1;
	memcpy(&fe_waiters->slots[fe_my_slot].run, id, sizeof(pg_uuid_t));
	fe_waiters->slots[fe_my_slot].latch = MyLatch;
	fe_waiters->slots[fe_my_slot].used = true;
	fe_waiters->nwaiting++;
	SpinLockRelease(&fe_waiters->mutex);

	PG_TRY();
	{
		for (;;)
		{
			bool		mine = false;
			long		left;

			ResetLatch(MyLatch);
			status = FeCatalogRunStatus(id, &mine);
			if (status == NULL)
				ereport(ERROR,
						(errcode(ERRCODE_UNDEFINED_OBJECT),
						 errmsg("flow run %s does not exist",
								DatumGetCString(DirectFunctionCall1(uuid_out, UUIDPGetDatum(id))))));
			if (strcmp(status, "running") != 0)
				break;
			if (mine)
				ereport(ERROR,
						(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
						 errmsg("flow_wait() would wait for its own transaction"),
						 errdetail("Run %s was advanced by this transaction; the worker can take its step only after the transaction commits.",
								   DatumGetCString(DirectFunctionCall1(uuid_out, UUIDPGetDatum(id)))),
						 errhint("Commit the turn first: call flow_process() and flow_wait() in separate transactions.")));
			left = (long) ((deadline - GetCurrentTimestamp()) / 1000);
			if (left <= 0)
				break;
			(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
							 left, PG_WAIT_EXTENSION);
			CHECK_FOR_INTERRUPTS();
		}
	}
	PG_FINALLY();
	{
		fe_wait_unregister();
	}
	PG_END_TRY();
	return status;
}
