#!/bin/sh
# The home page: the demo's own settings, as every demo gets them, and the time.
printf 'Content-Type: text/html\r\n\r\n'
cat <<HTML
<!doctype html>
<meta charset="utf-8">
<title>demofleet example: a web app</title>
<h1>${GREETING:-Hello}</h1>
<ul>
  <li>pull request: ${DEMO_PR:-?}</li>
  <li>commit: ${DEMO_SHA:-?}</li>
  <li>address: ${DEMO_URL:-?}</li>
  <li>answered at: $(date -u '+%Y-%m-%d %H:%M:%S UTC')</li>
</ul>
<p>Health: <a href="/cgi-bin/health">/cgi-bin/health</a></p>
HTML
