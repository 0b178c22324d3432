"""Streaming answers that stay streams under Daphne.

Django serving ASGI collects a plain (sync) iterator into memory before sending
it; a 200 MB file would sit in RAM. Under ASGI the blocking iterator is therefore
stepped in a worker thread from an async generator; under WSGI (tests' client,
a WSGI server) the plain iterator is served as it is.
"""

from collections.abc import Iterator

from asgiref.sync import sync_to_async
from django.core.files.storage import default_storage
from django.core.handlers.asgi import ASGIRequest
from django.http import StreamingHttpResponse
from django.utils.http import content_disposition_header

CHUNK = 1 << 16


def stream_response(request, chunks: Iterator[bytes], content_type: str, *, filename: str = "",
                    attachment: bool = True, uses_database: bool = False) -> StreamingHttpResponse:
    body = _unblocked(chunks, uses_database) if isinstance(request, ASGIRequest) else chunks
    response = StreamingHttpResponse(body, content_type=content_type)
    if filename:
        response["Content-Disposition"] = content_disposition_header(attachment, filename)
    response["X-Content-Type-Options"] = "nosniff"
    return response


async def _unblocked(chunks, uses_database: bool):
    # Database work must stay on Django's one sync thread; file reads need not.
    step = sync_to_async(next, thread_sensitive=uses_database)
    done = object()
    try:
        while (chunk := await step(chunks, done)) is not done:
            yield chunk
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            await sync_to_async(close, thread_sensitive=uses_database)()


def storage_chunks(name: str) -> Iterator[bytes]:
    with default_storage.open(name, "rb") as source:
        while block := source.read(CHUNK):
            yield block
