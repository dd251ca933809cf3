"""``memvos ui VIDEO_OR_FOLDER``: interactive segmentation in the browser (local web server on 127.0.0.1)."""

from __future__ import annotations

import argparse
import errno
import logging
import socket
import sys
from pathlib import Path

from memvos.cli.segment import add_session_arguments, session_options
from memvos.errors import InputError, MemvosError

logger = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "ui",
        help="interactive segmentation in the browser: clicks, scribbles, boxes; propagate; export",
        description="Start a local web server (127.0.0.1 only) for interactive segmentation of a video and "
        "print its URL. Annotations are saved in the project folder as you go and restored on restart. "
        "The server answers only to its own address (Host 127.0.0.1, localhost or [::1] with its port) "
        "and accepts changes only from its own page (Origin).",
    )
    p.add_argument("source", type=Path, metavar="VIDEO_OR_FOLDER", help="a video file or a folder of frames")
    p.add_argument("--port", type=int, default=8765, help="port on 127.0.0.1 (0: any free port)")
    p.add_argument(
        "--allow-host",
        action="append",
        default=[],
        metavar="NAME[:PORT]",
        help="also answer to this Host name (e.g. an /etc/hosts alias of 127.0.0.1, or localhost:9000 "
        "through an SSH tunnel); repeatable. Requests for any other host are refused (DNS rebinding)",
    )
    p.add_argument(
        "--project",
        type=Path,
        help="project folder: annotations, propagated masks, exports (default: ./<video name>.memvos)",
    )
    p.add_argument("--pml-weights", type=Path, help="pixel-embedding weights (default: shipped pml-lite.pth)")
    add_session_arguments(p)  # the propagation model and its session: the options of memvos segment
    p.set_defaults(func=run)


def bind(port: int) -> socket.socket:
    """A listening socket on 127.0.0.1:``port``; InputError when the port is taken."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(("127.0.0.1", port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise InputError(f"port {port} on 127.0.0.1 is in use; pass another --port") from None
        raise InputError(f"cannot listen on 127.0.0.1:{port}: {exc}") from None
    sock.listen(128)
    return sock


def run(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from memvos.interactive.server import create_app, parse_allowed_host
    except ImportError as exc:
        raise MemvosError(
            f"memvos ui needs FastAPI and uvicorn ({exc.name} is missing): "
            "pip install -c constraints.txt 'memvos[ui]'"
        ) from None
    from memvos.inference.session import resolve_device
    from memvos.interactive.embedding import default_embedder
    from memvos.interactive.video import InteractiveVideo
    from memvos.io.frames import open_frames
    from memvos.io.paths import check_outputs
    from memvos.models.registry import load_model

    for name in args.allow_host:  # a bad --allow-host fails before the model loads
        parse_allowed_host(name)
    open_frames(args.source)  # a missing or unreadable video fails here, before the model loads
    device = resolve_device(args.device)
    project = args.project or Path.cwd() / f"{args.source.resolve().name}.memvos"
    check_outputs(reads=[args.source, args.weights, args.pml_weights], out_dirs=[project])
    model = load_model(args.model, args.weights).to(device)
    embedder = default_embedder(model, args.pml_weights)
    if args.backend == "onnxruntime":
        raise InputError("memvos ui propagates with the torch backend (its clicks need the torch model)")
    options = {k: v for k, v in session_options(args).items() if k != "device"}
    options.update(precision=args.precision, compile=args.compile)
    iv = InteractiveVideo(model, embedder, device=str(device), session_options=options)
    iv.init_state(args.source, project_dir=project)
    sock = bind(args.port)
    host, port = sock.getsockname()[:2]
    url = f"http://{host}:{port}/"
    app = create_app(iv, host=host, port=port, allow_hosts=args.allow_host)
    print(f"memvos ui: {args.source} ({iv.num_frames} frames), project {project}", file=sys.stderr)
    print(f"memvos ui: open {url}  (Ctrl+C to stop)", flush=True)
    config = uvicorn.Config(app, log_level="warning", lifespan="off")
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()
        iv.close()
    return 0
