/*-------------------------------------------------------------------------
 *
 * http.c
 *	  The worker's HTTP client: libcurl's multi interface, driven by the
 *	  worker's own WaitEventSet.  The only file that includes curl.
 *
 * Requests are added and removed continuously: there is no batch and no
 * barrier, so a 30 s LLM call never holds up a 5 ms tool call.  One wait
 * covers the worker's latch, postmaster death and every curl socket, so a
 * commit, SIGTERM or SIGHUP is served while requests are in flight.
 *
 * Connections are reused (one multi handle for the worker's life) and
 * limited per host; every request has a total and a connect timeout (never
 * 0, which curl reads as "forever"), a response size cap, and no signals.
 *
 * Transactions and locks: none.  Nothing here may run inside a
 * transaction: the worker calls these functions between its short claim
 * and record transactions.  Nothing here raises an ERROR on a bad request
 * or response; failures are reported in the request.
 *
 * Memory: each request lives in a memory context of the caller's, which
 * also holds the response.  curl's own handles are malloc'd by curl and
 * freed by FeHttpRelease.
 *
 *-------------------------------------------------------------------------
 */
#include "flow_engine.h"

#include <curl/curl.h>

#include "miscadmin.h"
#include "storage/latch.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"
#include "utils/wait_event.h"

#include "http.h"

/* One curl socket the wait covers. */
typedef struct FeSock
{
	curl_socket_t fd;
	int			what;			/* CURL_POLL_IN / OUT / INOUT */
	int			pos;			/* position in the WaitEventSet, or -1 */
} FeSock;

static CURLM *fe_multi = NULL;
static FeSock *fe_socks = NULL;
static int	fe_nsocks = 0;
static int	fe_maxsocks = 0;
static bool fe_rebuild = true;
static WaitEventSet *fe_set = NULL;
static int	fe_inflight = 0;
static TimestampTz fe_curl_deadline = 0;	/* 0 = curl wants no timer */
static List *fe_done = NIL;		/* FeHttpRequest *, finished */

static void fe_http_fail(FeHttpRequest *r, const char *fmt,...) pg_attribute_printf(2, 3);

static void
fe_finish(FeHttpRequest *r)
{
	MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);

	fe_done = lappend(fe_done, r);
	MemoryContextSwitchTo(old);
}

static void
fe_http_fail(FeHttpRequest *r, const char *fmt,...)
{
	va_list		ap;
	char		buf[512];

	if (r->error)
		return;
	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	r->error = MemoryContextStrdup(r->mcxt, buf);
}

/* ---------------------------------------------------------------------
 * Sockets and timer, as curl asks for them
 * ---------------------------------------------------------------------
 */
static FeSock *
fe_sock_find(curl_socket_t fd)
{
	int			i;

	for (i = 0; i < fe_nsocks; i++)
		if (fe_socks[i].fd == fd)
			return &fe_socks[i];
	return NULL;
}

static uint32
fe_sock_events(int what)
{
	uint32		ev = 0;

	if (what == CURL_POLL_IN || what == CURL_POLL_INOUT)
		ev |= WL_SOCKET_READABLE;
	if (what == CURL_POLL_OUT || what == CURL_POLL_INOUT)
		ev |= WL_SOCKET_WRITEABLE;
	return ev;
}

static int
fe_socket_cb(CURL *easy, curl_socket_t fd, int what, void *userp, void *socketp)
{
	FeSock	   *s = fe_sock_find(fd);

	if (what == CURL_POLL_REMOVE)
	{
		if (s)
		{
			*s = fe_socks[--fe_nsocks];
			fe_rebuild = true;
		}
		return 0;
	}
	if (s == NULL)
	{
		if (fe_nsocks == fe_maxsocks)
		{
			fe_maxsocks *= 2;
			fe_socks = repalloc(fe_socks, sizeof(FeSock) * fe_maxsocks);
		}
		s = &fe_socks[fe_nsocks++];
		s->fd = fd;
		s->pos = -1;
		s->what = what;
		fe_rebuild = true;
		return 0;
	}
	if (s->what != what)
	{
		s->what = what;
		if (!fe_rebuild && s->pos >= 0)
			ModifyWaitEvent(fe_set, s->pos, fe_sock_events(what), NULL);
	}
	return 0;
}

static int
fe_timer_cb(CURLM *multi, long timeout_ms, void *userp)
{
	if (timeout_ms < 0)
		fe_curl_deadline = 0;
	else
		fe_curl_deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), timeout_ms);
	return 0;
}

/* ---------------------------------------------------------------------
 * Setup
 * ---------------------------------------------------------------------
 */
#define FE_MULTI_SET(opt, val) \
	do { \
		CURLMcode mc_ = curl_multi_setopt(fe_multi, (opt), (val)); \
		if (mc_ != CURLM_OK) \
			ereport(FATAL, \
					(errcode(ERRCODE_SYSTEM_ERROR), \
					 errmsg("could not configure the flow_engine HTTP client: %s", \
							curl_multi_strerror(mc_)))); \
	} while (0)

void
FeHttpInit(void)
{
	CURLcode	rc = curl_global_init(CURL_GLOBAL_DEFAULT);

	if (rc != CURLE_OK)
		ereport(FATAL,
				(errcode(ERRCODE_SYSTEM_ERROR),
				 errmsg("could not initialise libcurl: %s", curl_easy_strerror(rc))));
	fe_multi = curl_multi_init();
	if (fe_multi == NULL)
		ereport(FATAL,
				(errcode(ERRCODE_OUT_OF_MEMORY),
				 errmsg("could not create the flow_engine HTTP client")));
	fe_maxsocks = 64;
	fe_socks = MemoryContextAlloc(TopMemoryContext, sizeof(FeSock) * fe_maxsocks);
	FE_MULTI_SET(CURLMOPT_SOCKETFUNCTION, fe_socket_cb);
	FE_MULTI_SET(CURLMOPT_TIMERFUNCTION, fe_timer_cb);
	FeHttpConfigure();
}

/* Apply the settings a SIGHUP may have changed. */
void
FeHttpConfigure(void)
{
	FE_MULTI_SET(CURLMOPT_MAX_HOST_CONNECTIONS, (long) fe_http_max_host_connections);
	FE_MULTI_SET(CURLMOPT_MAXCONNECTS, (long) Max(fe_http_max_host_connections * 4, 64));
}

int
FeHttpInflight(void)
{
	return fe_inflight;
}

/* ---------------------------------------------------------------------
 * One request
 * ---------------------------------------------------------------------
 */
static size_t
fe_write_cb(char *data, size_t size, size_t nmemb, void *userp)
{
	FeHttpRequest *r = (FeHttpRequest *) userp;
	size_t		n = size * nmemb;

	if ((Size) r->body_out.len + n > (Size) r->max_response)
	{
		r->too_large = true;
		return 0;				/* curl fails the transfer with a write error */
	}
	appendBinaryStringInfo(&r->body_out, data, n);
	return n;
}

static size_t
fe_header_cb(char *data, size_t size, size_t nmemb, void *userp)
{
	FeHttpRequest *r = (FeHttpRequest *) userp;
	size_t		n = size * nmemb;
	size_t		len = n;
	char	   *colon;
	size_t		i;

	/* a new status line (redirect, 100 Continue) starts a new header set */
	if (len >= 5 && strncmp(data, "HTTP/", 5) == 0)
	{
		resetStringInfo(&r->headers_out);
		return n;
	}
	while (len > 0 && (data[len - 1] == '\r' || data[len - 1] == '\n'))
		len--;
	colon = memchr(data, ':', len);
	if (colon == NULL || r->headers_out.len > 65536)
		return n;
	/* "name:value\n", the name lower-cased */
	for (i = 0; data + i < colon; i++)
		appendStringInfoChar(&r->headers_out, pg_ascii_tolower((unsigned char) data[i]));
	appendStringInfoChar(&r->headers_out, ':');
	for (i = colon - data + 1; i < len && (data[i] == ' ' || data[i] == '\t'); i++)
		;
	appendBinaryStringInfo(&r->headers_out, data + i, len - i);
	appendStringInfoChar(&r->headers_out, '\n');
	return n;
}

#define FE_EASY_SET(opt, val) \
	do { \
		if (rc == CURLE_OK) \
			rc = curl_easy_setopt(r->easy, (opt), (val)); \
	} while (0)

/*
 * Put a request on the wire (as soon as curl has a connection for it).
 * On failure to even start, the request is finished at once with an error.
 */
void
FeHttpStart(FeHttpRequest *r)
{
	CURLcode	rc = CURLE_OK;
	CURLMcode	mc;
	ListCell   *lc;
	MemoryContext old = MemoryContextSwitchTo(r->mcxt);

	initStringInfo(&r->body_out);
	initStringInfo(&r->headers_out);
	r->status = 0;
	r->error = NULL;
	r->too_large = false;
	r->started_at = GetCurrentTimestamp();
	r->easy = curl_easy_init();
	r->hdrs = NULL;
	MemoryContextSwitchTo(old);
	if (r->easy == NULL)
	{
		fe_http_fail(r, "could not create a curl handle");
		fe_finish(r);
		return;
	}
	fe_inflight++;				/* until FeHttpRelease */
	foreach(lc, r->headers)
	{
		struct curl_slist *n = curl_slist_append((struct curl_slist *) r->hdrs,
												 (char *) lfirst(lc));

		if (n == NULL)
		{
			rc = CURLE_OUT_OF_MEMORY;
			break;
		}
		r->hdrs = n;
	}
	FE_EASY_SET(CURLOPT_URL, r->url);
	FE_EASY_SET(CURLOPT_PROTOCOLS_STR, "http,https");
	FE_EASY_SET(CURLOPT_NOSIGNAL, 1L);
	FE_EASY_SET(CURLOPT_TIMEOUT_MS, (long) Max(r->timeout_ms, 1));
	FE_EASY_SET(CURLOPT_CONNECTTIMEOUT_MS,
				(long) Max(Min(fe_http_connect_timeout_ms, r->timeout_ms), 1));
	FE_EASY_SET(CURLOPT_TCP_KEEPALIVE, 1L);
	FE_EASY_SET(CURLOPT_ACCEPT_ENCODING, "");
	FE_EASY_SET(CURLOPT_USERAGENT, "flow_engine/" FE_VERSION);
	FE_EASY_SET(CURLOPT_PRIVATE, (void *) r);
	FE_EASY_SET(CURLOPT_WRITEFUNCTION, fe_write_cb);
	FE_EASY_SET(CURLOPT_WRITEDATA, (void *) r);
	FE_EASY_SET(CURLOPT_HEADERFUNCTION, fe_header_cb);
	FE_EASY_SET(CURLOPT_HEADERDATA, (void *) r);
	FE_EASY_SET(CURLOPT_ERRORBUFFER, r->curl_error);
	FE_EASY_SET(CURLOPT_HTTPHEADER, (struct curl_slist *) r->hdrs);
	if (strcmp(r->method, "HEAD") == 0)
		FE_EASY_SET(CURLOPT_NOBODY, 1L);
	else if (strcmp(r->method, "GET") != 0)
		FE_EASY_SET(CURLOPT_CUSTOMREQUEST, r->method);
	if (r->body)
	{
		FE_EASY_SET(CURLOPT_POSTFIELDSIZE, (long) r->body_len);
		FE_EASY_SET(CURLOPT_POSTFIELDS, r->body);
	}
	r->curl_error[0] = '\0';
	if (rc != CURLE_OK)
	{
		fe_http_fail(r, "could not prepare the request: %s", curl_easy_strerror(rc));
		FeHttpRelease(r);
		fe_finish(r);
		return;
	}
	mc = curl_multi_add_handle(fe_multi, r->easy);
	if (mc != CURLM_OK)
	{
		fe_http_fail(r, "could not start the request: %s", curl_multi_strerror(mc));
		FeHttpRelease(r);
		fe_finish(r);
		return;
	}
	r->added = true;
}

/* Free curl's side of a finished request (the caller frees its context). */
void
FeHttpRelease(FeHttpRequest *r)
{
	if (r->easy)
	{
		if (r->added)
		{
			CURLMcode	mc = curl_multi_remove_handle(fe_multi, r->easy);

			if (mc != CURLM_OK)
				elog(WARNING, "flow_engine: could not detach a curl handle: %s",
					 curl_multi_strerror(mc));
			r->added = false;
		}
		curl_easy_cleanup(r->easy);
		r->easy = NULL;
		fe_inflight--;
	}
	if (r->hdrs)
	{
		curl_slist_free_all((struct curl_slist *) r->hdrs);
		r->hdrs = NULL;
	}
}

/* Move transfers that curl reports done to fe_done. */
static void
fe_collect(void)
{
	CURLMsg    *m;
	int			left;

	while ((m = curl_multi_info_read(fe_multi, &left)) != NULL)
	{
		FeHttpRequest *r = NULL;
		curl_off_t	t;

		if (m->msg != CURLMSG_DONE)
			continue;
		if (curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **) &r) != CURLE_OK ||
			r == NULL)
			continue;
		if (m->data.result == CURLE_OK)
		{
			if (curl_easy_getinfo(r->easy, CURLINFO_RESPONSE_CODE, &r->status) != CURLE_OK)
				fe_http_fail(r, "could not read the response status");
		}
		else if (r->too_large)
			fe_http_fail(r, "the response is larger than flow_engine.http_max_response_size (%d kB)",
						 fe_http_max_response_kb);
		else if (m->data.result == CURLE_OPERATION_TIMEDOUT)
			fe_http_fail(r, "timed out after %d ms", r->timeout_ms);
		else
			fe_http_fail(r, "%s%s%s", curl_easy_strerror(m->data.result),
						 r->curl_error[0] ? ": " : "", r->curl_error);
		r->timed_out = (m->data.result == CURLE_OPERATION_TIMEDOUT);
		if (curl_easy_getinfo(r->easy, CURLINFO_CONNECT_TIME_T, &t) == CURLE_OK)
			r->connect_us = t;
		if (curl_easy_getinfo(r->easy, CURLINFO_PRETRANSFER_TIME_T, &t) == CURLE_OK)
			r->pretransfer_us = t;
		if (curl_easy_getinfo(r->easy, CURLINFO_STARTTRANSFER_TIME_T, &t) == CURLE_OK)
			r->ttfb_us = t;
		if (curl_easy_getinfo(r->easy, CURLINFO_TOTAL_TIME_T, &t) == CURLE_OK)
			r->total_us = t;
		FeHttpRelease(r);
		fe_finish(r);
	}
}

static void
fe_socket_action(curl_socket_t fd, int mask)
{
	int			running;
	CURLMcode	mc = curl_multi_socket_action(fe_multi, fd, mask, &running);

	if (mc != CURLM_OK)
		elog(WARNING, "flow_engine: curl_multi_socket_action failed: %s",
			 curl_multi_strerror(mc));
}

/* Give curl its timer if it is due. */
static void
fe_run_timer(void)
{
	int			guard = 0;

	while (fe_curl_deadline != 0 && fe_curl_deadline <= GetCurrentTimestamp() && guard++ < 8)
	{
		fe_curl_deadline = 0;
		fe_socket_action(CURL_SOCKET_TIMEOUT, 0);
	}
}

static void
fe_build_set(void)
{
	int			i;

	if (fe_set)
		FreeWaitEventSet(fe_set);
	fe_set = CreateWaitEventSet(TopMemoryContext, fe_nsocks + 2);
	AddWaitEventToSet(fe_set, WL_LATCH_SET, PGINVALID_SOCKET, MyLatch, NULL);
	AddWaitEventToSet(fe_set, WL_EXIT_ON_PM_DEATH, PGINVALID_SOCKET, NULL, NULL);
	for (i = 0; i < fe_nsocks; i++)
		fe_socks[i].pos = AddWaitEventToSet(fe_set, fe_sock_events(fe_socks[i].what),
											fe_socks[i].fd, NULL, NULL);
	fe_rebuild = false;
}

/*
 * Wait up to timeout_ms for the latch, a curl socket or curl's timer, and
 * let curl make progress.  Returns true if the latch was set.  Finished
 * requests are then available from FeHttpTakeDone.
 */
bool
FeHttpWait(long timeout_ms)
{
	WaitEvent	events[64];
	int			n,
				i;
	bool		latch = false;

	fe_run_timer();
	fe_collect();
	if (fe_done != NIL)
		timeout_ms = 0;			/* results to record: do not sleep */
	if (fe_curl_deadline != 0)
	{
		long		curl_ms = (long) ((fe_curl_deadline - GetCurrentTimestamp()) / 1000) + 1;

		timeout_ms = Min(timeout_ms, Max(curl_ms, 0));
	}
	if (fe_rebuild || fe_set == NULL)
		fe_build_set();
	n = WaitEventSetWait(fe_set, timeout_ms, events, lengthof(events), PG_WAIT_EXTENSION);
	for (i = 0; i < n; i++)
	{
		WaitEvent  *e = &events[i];
		int			mask = 0;

		if (e->events & WL_LATCH_SET)
		{
			latch = true;
			continue;
		}
		if (e->events & WL_SOCKET_READABLE)
			mask |= CURL_CSELECT_IN;
		if (e->events & WL_SOCKET_WRITEABLE)
			mask |= CURL_CSELECT_OUT;
		if (mask && fe_sock_find(e->fd))
			fe_socket_action(e->fd, mask);
	}
	fe_run_timer();
	fe_collect();
	return latch;
}

/* The requests that finished since the last call, oldest first. */
List *
FeHttpTakeDone(void)
{
	List	   *done = fe_done;

	fe_done = NIL;
	return done;
}

/* Microseconds since the epoch of PostgreSQL timestamps, as ISO text. */
char *
FeHttpWireTime(FeHttpRequest *r)
{
	return pstrdup(timestamptz_to_str(r->started_at + r->pretransfer_us));
}
