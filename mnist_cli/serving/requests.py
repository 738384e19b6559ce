"""Reading a /predict request: the body within its size limit (a refused body drained so every client reads
the 413), multipart files, and the query's options."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Tuple

import anyio
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, MultipartState, parse_options_header
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request

MAX_FILES = 100  # files in one multipart request; the body limit alone would allow tens of thousands of tiny ones


MAX_PARTS = 2 * MAX_FILES  # parts of any kind: parsing stops there (a body of empty parts costs a second or more)


DRAIN = 64_000_000  # bytes of a refused body read and dropped at most, so that the client reads the 413 ...


DRAIN_SECONDS = 10  # ... for at most this long (nginx's lingering close does the same)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, in memory; 413 as soon as more than `limit` bytes have arrived (or at once when
    Content-Length says more than `limit` + DRAIN, or more than `limit` to a client waiting for 100 Continue)."""
    refused = HTTPException(
        413, f"the request body is over {limit / 1e6:g} MB; send a smaller image (the server's max_body_mb)."
    )
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        if int(declared) > limit + DRAIN or request.headers.get("expect", "").lower() == "100-continue":
            raise refused  # too much to drop, or a client that sends no body until asked to
        # else: read as far as the limit, then drop the rest (drop_rest says why)
    chunks, size, more = [], 0, True
    while more and size <= limit:
        chunk, more = await next_chunk(request)
        chunks.append(chunk)
        size += len(chunk)
    if size > limit:
        await drop_rest(request, more)
        raise refused
    return b"".join(chunks)


async def next_chunk(request: Request) -> Tuple[bytes, bool]:
    """The next piece of the request body and whether more follows; ClientDisconnect if the client went away."""
    message = await request.receive()
    if message["type"] == "http.disconnect":
        raise ClientDisconnect()
    return message.get("body", b""), message.get("more_body", False)


async def drop_rest(request: Request, more: bool) -> None:
    """Read and drop the rest of a refused body, up to DRAIN bytes in DRAIN_SECONDS. A socket closed with bytes
    unread sends a reset, and a client that reads only once its whole body is sent (Python's urllib; it also
    asks for Connection: close) would see `Connection reset by peer` instead of the 413."""
    dropped = 0
    with anyio.move_on_after(DRAIN_SECONDS):
        while more and dropped <= DRAIN:
            chunk, more = await next_chunk(request)
            dropped += len(chunk)


@dataclass
class Part:
    """One part of a multipart body as it is parsed: its headers and its bytes."""

    headers: Dict[bytes, bytes] = field(default_factory=dict)
    name: bytearray = field(default_factory=bytearray)  # the header being read
    value: bytearray = field(default_factory=bytearray)
    data: bytearray = field(default_factory=bytearray)

    def end_header(self) -> None:
        self.headers[bytes(self.name).strip().lower()] = bytes(self.value).strip()
        self.name, self.value = bytearray(), bytearray()


def too_many() -> None:
    raise HTTPException(413, f"more than {MAX_PARTS} parts in one request; send at most {MAX_FILES} files at a time.")


def multipart_files(body: bytes, content_type: str) -> List[Tuple[str, bytes]]:
    """(file name, bytes) of each file part of a multipart/form-data body, in order; form fields without
    a file name are left out. Parsed in memory (no temporary files); raises HTTPException 422 or 413."""
    boundary = parse_options_header(content_type)[1].get(b"boundary")
    if not boundary:
        raise HTTPException(
            422, "multipart/form-data without a boundary; let the client build the request (curl -F file=@digit.png)."
        )
    parts: List[Part] = []
    callbacks = {
        "on_part_begin": lambda: parts.append(Part()) if len(parts) <= MAX_PARTS else too_many(),
        "on_header_field": lambda data, start, end: parts[-1].name.extend(data[start:end]),
        "on_header_value": lambda data, start, end: parts[-1].value.extend(data[start:end]),
        "on_header_end": lambda: parts[-1].end_header(),
        "on_part_data": lambda data, start, end: parts[-1].data.extend(data[start:end]),
    }
    try:
        parser = MultipartParser(boundary, callbacks)
        parser.write(body)
        parser.finalize()
    except (MultipartParseError, ValueError) as error:
        raise HTTPException(422, f"the multipart body cannot be read ({str(error).rstrip('.')}).") from None
    if parser.state != MultipartState.END:  # the parser accepts a body cut short: its last file would be too
        raise HTTPException(422, "the multipart body is cut short (no closing boundary); send it whole.")
    files = []
    for part in parts:
        options = parse_options_header(part.headers.get(b"content-disposition", b""))[1]
        if b"filename" in options:  # a name only: it is echoed back, never opened
            files.append((options[b"filename"].decode("utf-8", "replace"), bytes(part.data)))
    if len(files) > MAX_FILES:
        raise HTTPException(413, f"{len(files)} files in one request; send at most {MAX_FILES} at a time.")
    return files


YES, NO = ("1", "true", "yes"), ("0", "false", "no")  # ?return_image=


def predict_options(request: Request, classes: int, topk_default: int) -> Tuple[int, bool]:
    """(topk, return_image) from POST /predict's query, by default (the server's topk, False); HTTPException 422
    for an unknown key, a key given twice or a bad value."""
    query = request.query_params
    for key in query:
        if key not in ("topk", "return_image"):
            raise HTTPException(
                422, f"{key!r} is not a /predict option; use topk=1..{classes} or return_image=true|false."
            )
        if len(query.getlist(key)) > 1:
            raise HTTPException(422, f"{key} is given {len(query.getlist(key))} times; give it once.")
    topk = query.get("topk", "")
    if topk and not (topk.isascii() and topk.isdigit() and len(topk) <= 6 and 1 <= int(topk) <= classes):
        raise HTTPException(422, f"topk must be a whole number from 1 to {classes} (got {topk!r}).")
    image = query.get("return_image", "false")
    if image.lower() not in YES + NO:
        raise HTTPException(422, f"return_image must be true or false (got {image!r}).")
    return int(topk) if topk else topk_default, image.lower() in YES
