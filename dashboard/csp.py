"""A Content-Security-Policy on every page: scripts only from this site's own files
(no inline script, no eval), so an injected <script> or event handler does not run.

Styles may be inline: Plotly and xterm.js insert their own <style> elements (htmx is
told not to, and to evaluate nothing: the htmx-config meta tag in base.html).
A response that sets its own policy keeps it.
"""

POLICY = "; ".join([
    "default-src 'self'",
    "script-src 'self'",
    "style-src 'self' 'unsafe-inline'",
    "img-src 'self' data: blob:",
    "font-src 'self' data:",
    "connect-src 'self'",  # the API and the websockets, same origin
    "object-src 'none'",
    "base-uri 'self'",
    "form-action 'self'",
    "frame-ancestors 'none'",
])


class ContentSecurityPolicyMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        response.headers.setdefault("Content-Security-Policy", POLICY)
        return response
