"""Drives a 2026-08 gateway emulator with the published Python SDK (openshell 0.0.113).

usage: python sdk_smoke.py HOST:PORT SANDBOX_NAME WORKSPACE

Prints one JSON line with what each step saw; exits non-zero on the first mismatch.
"""

import json
import sys

from openshell import SandboxClient
from openshell._proto import openshell_pb2


def main() -> int:
    endpoint, name, workspace = sys.argv[1], sys.argv[2], sys.argv[3]
    seen: dict = {}
    with SandboxClient(endpoint, timeout=30.0) as client:
        health = client.health()
        seen["health"] = int(health.status)
        assert health.status == openshell_pb2.SERVICE_STATUS_HEALTHY, health

        created = client.create(workspace=workspace, name=name)
        seen["created"] = {"id": created.id, "name": created.name, "workspace": created.workspace, "phase": created.status.phase}
        assert created.name == name and created.workspace == workspace, created

        ready = client.wait_ready(name, workspace=workspace, timeout_seconds=60)
        seen["ready_phase"] = ready.status.phase
        assert ready.status.phase == openshell_pb2.SANDBOX_PHASE_READY, ready

        result = client.exec(ready.id, ["echo", "hi"])
        seen["exec"] = {"exit_code": result.exit_code, "stdout": result.stdout}
        assert result.exit_code == 0 and result.stdout == "hi\n", result

        stopped = client.stop(name, workspace=workspace)
        seen["stopped_phase"] = stopped.status.phase
        assert stopped.status.phase == openshell_pb2.SANDBOX_PHASE_STOPPED, stopped

        listed = client.list_ids(workspace=workspace) if hasattr(client, "list_ids") else []
        seen["listed"] = list(listed)
    print(json.dumps(seen))
    return 0


if __name__ == "__main__":
    sys.exit(main())
