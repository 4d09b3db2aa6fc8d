"""`vharm serve`: the local web page (`vharm.serve`), served by uvicorn on a socket bound here, so that a port in use
is the usual one-line error rather than a server log."""

from __future__ import annotations

import ipaddress
import socket
import sys

from vharm.cli.harmonize import add_model_flags, load_harmonizer
from vharm.errors import VharmError


def is_loopback(host: str) -> bool:
    """Whether `host` only reaches this machine: localhost, 127.0.0.0/8, ::1.

    Example:
        >>> is_loopback("127.0.0.1"), is_loopback("localhost"), is_loopback("0.0.0.0"), is_loopback("::1")
        (True, True, False, True)
    """
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name other than localhost: it may resolve anywhere
        return False


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (port 0: any free port)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as e:
        raise VharmError(f"--host {host}: not an address of this machine ({e.strerror})") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as e:
        sock.close()
        raise VharmError(f"--host {host} --port {port}: cannot listen there ({e.strerror}); is another server "
                         "using it? Choose another --port") from None
    sock.listen(128)
    return sock


def cmd_serve(args) -> None:
    try:
        import uvicorn

        from vharm.serve.app import LOCAL_HOSTS, create_app
    except ModuleNotFoundError as e:
        if e.name not in ("uvicorn", "fastapi", "starlette", "python_multipart", "pydantic"):
            raise
        raise VharmError(f"vharm serve: {e.name} is not installed (pip install 'vharm[serve]')") from None
    from vharm.serve.uploads import parse_size

    max_upload = parse_size(args.max_upload)
    harmonizer = load_harmonizer(args)
    local = is_loopback(args.host)
    if not local:
        print(f"vharm: warning: --host {args.host}: anyone who can reach this machine on port {args.port} can use "
              "this page, its uploads and its results (no login, no encryption)", file=sys.stderr)
    sock = bind(args.host, args.port)
    app = create_app(harmonizer, max_upload=max_upload, weights=args.weights or "default",
                     allowed_hosts=(*LOCAL_HOSTS, args.host) if local else ("*",))
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    print(f"vharm serve: open http://{shown}:{port}/ in a browser (Ctrl-C stops the server and removes its "
          "temporary files)", flush=True)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    server.run(sockets=[sock])


def add_parsers(sub) -> None:
    """Registers `vharm serve` on the `vharm` subcommand parser."""
    s = sub.add_parser("serve", help="a local web page to harmonize, compare, tune and export")
    s.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only; anything else warns)")
    s.add_argument("--port", type=int, default=7860, help="port to listen on (0: any free port)")
    s.add_argument("--max-upload", default="2GB", metavar="SIZE",
                   help="largest upload, and largest unpacked zip of frames (500MB, 2GB, 4GiB, ...)")
    add_model_flags(s)
    s.set_defaults(func=cmd_serve)
