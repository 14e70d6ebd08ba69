"""Run a mongoeco MongoDB wire-protocol server on loopback with its SQLite engine.

mongoeco (https://pypi.org/project/mongoeco/) needs Python >= 3.13, so this script
runs in its own virtual environment (``.venv-mongoeco``, made by
``scripts/mongoeco_server.sh setup``), never in the project's 3.11 venv.

    .venv-mongoeco/bin/python scripts/mongoeco_server.py --data-dir /tmp/db --port 0 \
        --port-file /tmp/db/port

It binds 127.0.0.1 only. ``--port 0`` picks a free port; the chosen port is written
(atomically) to ``--port-file`` and printed as ``mongodb://127.0.0.1:PORT/`` on
stdout once the server accepts connections. SIGTERM / SIGINT stop it cleanly.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from pathlib import Path


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", required=True, help="folder for the SQLite database file")
    p.add_argument("--host", default="127.0.0.1", help="bind address (loopback only by default)")
    p.add_argument("--port", type=int, default=27017, help="0 picks a free port")
    p.add_argument("--port-file", default=None, help="write the bound port here once listening")
    p.add_argument("--dialect", default="7.0", help="MongoDB dialect mongoeco emulates")
    p.add_argument("--pymongo-profile", default=None, help="mongoeco PyMongo profile (default: its own)")
    p.add_argument("--memory", action="store_true", help="in-memory engine instead of SQLite")
    return p.parse_args(argv)


async def _serve(args: argparse.Namespace) -> None:
    from mongoeco.engines.memory import MemoryEngine
    from mongoeco.engines.sqlite import SQLiteEngine
    from mongoeco.wire.proxy import AsyncMongoEcoProxyServer

    data = Path(args.data_dir)
    data.mkdir(parents=True, exist_ok=True)
    engine = MemoryEngine() if args.memory else SQLiteEngine(str(data / "mongoeco.sqlite"), executor_workers=1)
    kwargs = {"mongodb_dialect": args.dialect}
    if args.pymongo_profile:
        kwargs["pymongo_profile"] = args.pymongo_profile
    server = AsyncMongoEcoProxyServer(engine=engine, host=args.host, port=args.port, **kwargs)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    address = await server.start()
    try:
        if args.port_file:
            tmp = Path(args.port_file + ".tmp")
            tmp.write_text(str(address.port))
            os.replace(tmp, args.port_file)
        print(f"mongodb://{address.host}:{address.port}/", flush=True)
        await stop.wait()
    finally:
        await server.close()


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if sys.version_info < (3, 13):
        print("mongoeco needs Python >= 3.13; run this with .venv-mongoeco/bin/python", file=sys.stderr)
        return 2
    asyncio.run(_serve(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
