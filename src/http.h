/*-------------------------------------------------------------------------
 *
 * http.h
 *	  The worker's HTTP client (http.c), without curl's types.
 *
 *-------------------------------------------------------------------------
 */
#ifndef FE_HTTP_H
#define FE_HTTP_H

#include "lib/stringinfo.h"
#include "nodes/pg_list.h"
#include "utils/timestamp.h"

typedef struct FeHttpRequest
{
	/* set by the caller */
	MemoryContext mcxt;			/* holds the request and its response */
	const char *method;			/* GET, POST, ... */
	const char *url;
	List	   *headers;		/* "Name: value" strings */
	const char *body;			/* or NULL */
	size_t		body_len;
	int			timeout_ms;		/* total; always >= 1 */
	long		max_response;	/* bytes */
	void	   *owner;			/* the caller's job */

	/* results */
	long		status;			/* HTTP status, when error is NULL */
	char	   *error;			/* transport failure, or NULL */
	bool		timed_out;
	bool		too_large;
	StringInfoData body_out;
	StringInfoData headers_out; /* "name:value\n" lines, names lower-cased */
	TimestampTz started_at;		/* handed to curl */
	int64		connect_us;		/* from started_at */
	int64		pretransfer_us; /* request on the wire */
	int64		ttfb_us;
	int64		total_us;

	/* curl's side (http.c only) */
	void	   *easy;
	void	   *hdrs;
	bool		added;
	char		curl_error[256];
} FeHttpRequest;

extern void FeHttpInit(void);
extern void FeHttpConfigure(void);
extern void FeHttpStart(FeHttpRequest *r);
extern void FeHttpRelease(FeHttpRequest *r);
extern bool FeHttpWait(long timeout_ms);
extern List *FeHttpTakeDone(void);
extern int	FeHttpInflight(void);
extern char *FeHttpWireTime(FeHttpRequest *r);

#endif							/* FE_HTTP_H */
