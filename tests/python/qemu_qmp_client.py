#!/usr/bin/env python3
"""A management tool written for QEMU, unchanged, against netdevd: QEMU's own Python QMP
library (PyPI qemu.qmp) negotiates, adds and deletes netdevs, sets links, queries rx
filters and announces, and sees QEMU's error classes. Prints 'N passed, N failed'."""
import asyncio
import os
import subprocess
import sys
import tempfile
import time

from qemu.qmp import QMPClient, ExecuteError

BIN = sys.argv[1] if len(sys.argv) > 1 else "target/debug/netdevd"


async def checks(sock):
    results = []

    def check(name, cond):
        results.append((name, bool(cond)))
        print(("ok   " if cond else "FAIL ") + name)

    qmp = QMPClient("netdevd-test")
    await qmp.connect(sock)
    check("greeting names QEMU 7.2", qmp.greeting.QMP.version["qemu"]["major"] == 7)
    await qmp.execute("netdev_add", {"type": "hubport", "id": "p1", "hubid": 0})
    try:
        await qmp.execute("netdev_add", {"type": "hubport", "id": "p1", "hubid": 0})
        check("duplicate id refused", False)
    except ExecuteError as e:
        check("duplicate id refused with GenericError", e.error.error.class_ == "GenericError")
    await qmp.execute("set_link", {"name": "p1", "up": False})
    try:
        await qmp.execute("set_link", {"name": "nope", "up": True})
        check("unknown link refused", False)
    except ExecuteError as e:
        check("unknown link is DeviceNotFound", e.error.error.class_ == "DeviceNotFound")
    check("no NICs: empty rx filter list", await qmp.execute("query-rx-filter") == [])
    await qmp.execute("announce-self", {"initial": 50, "max": 550, "rounds": 3, "step": 50})
    await qmp.execute("netdev_del", {"id": "p1"})
    try:
        await qmp.execute("netdev_del", {"id": "p1"})
        check("second delete refused", False)
    except ExecuteError as e:
        check("second delete is DeviceNotFound", e.error.error.class_ == "DeviceNotFound")
    names = [c["name"] for c in await qmp.execute("query-commands")]
    check("query-commands lists the net commands", {"netdev_add", "netdev_del", "set_link", "query-rx-filter", "announce-self"} <= set(names))
    await qmp.disconnect()
    return results


def main():
    with tempfile.TemporaryDirectory() as d:
        sock = os.path.join(d, "n.sock")
        proc = subprocess.Popen([BIN, "--qmp", f"unix:{sock},server=on,wait=off",
                                 "--netdev", "hubport,id=h0,hubid=0"], stdout=subprocess.DEVNULL)
        try:
            for _ in range(500):
                if os.path.exists(sock):
                    break
                time.sleep(0.01)
            results = asyncio.run(checks(sock))
        finally:
            proc.terminate()
            proc.wait(timeout=10)
    failed = sum(1 for _, ok in results if not ok)
    print(f"{len(results) - failed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
