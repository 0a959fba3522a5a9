"""Response size and time to serve it, through a real Prover on loopback. Prints JSON.

    OMP_NUM_THREADS=2 python benchmarks/service_response.py --task digits-logreg --pairs 16667

Starts the Prover (uvicorn, a temporary SQLite database), publishes an attribution, posts a
challenge with ``6 * pairs`` subsets (|E| = 100,002 for the default), waits for the training,
then times the download of the signed manifest and the two arrays (values, probes) with httpx.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import tempfile
import threading
import time
from pathlib import Path

for _v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_v, "2")

import httpx  # noqa: E402
import uvicorn  # noqa: E402

from protocol.messages import Challenge, ResponseManifest, commit_spot_checks  # noqa: E402
from protocol.signing import generate_key, public_key_hex, save_private_key, sign_message  # noqa: E402
from prover_service.app import create_app  # noqa: E402
from prover_service.settings import Settings  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--task", default="digits-logreg")
    ap.add_argument("--pairs", type=int, default=16667)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        save_private_key(generate_key(), root / "k.pem")
        settings = Settings(db=f"sqlite:///{root}/p.db", key_file=root / "k.pem", tasks=[args.task])
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        server = uvicorn.Server(uvicorn.Config(create_app(settings), port=port, log_level="error"))
        threading.Thread(target=server.run, daemon=True).start()
        while not server.started:
            time.sleep(0.05)
        client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=600)
        task = client.get("/v1/info").json()["tasks"][0]
        job = client.post(
            "/v1/attributions",
            json={"task_hash": task["task_hash"], "method": "influence", "budget": 64},
        ).json()
        while (doc := client.get(f"/v1/jobs/{job['id']}").json())["status"] != "done":
            time.sleep(0.2)
        vkey = generate_key()
        challenge = Challenge(
            task_hash=task["task_hash"],
            attribution_hash=doc["result"],
            p=0.5,
            rho0=0.2,
            pairs_per_level=args.pairs,
            challenge_seed=os.urandom(32).hex(),
            spot_check_commitment=commit_spot_checks([0], bytes(32)),
            epsilon=1.0,
            delta=0.05,
            bound=task["bound"],
            tau=0.0,
            estimator="gap",
            nonce=os.urandom(16).hex(),
            timestamp=int(time.time()),
            verifier_key=public_key_hex(vkey),
        )
        started = time.perf_counter()
        sid = client.post("/v1/challenges", json=sign_message(vkey, challenge).model_dump()).json()[
            "session_id"
        ]
        while client.get(f"/v1/sessions/{sid}").json()["status"] != "ready":
            time.sleep(0.5)
        training = time.perf_counter() - started
        t0 = time.perf_counter()
        manifest_raw = client.get(f"/v1/sessions/{sid}/response").content
        manifest = ResponseManifest.model_validate(json.loads(manifest_raw)["payload"])
        values = client.get(f"/v1/arrays/{manifest.values.sha256}").content
        probes = client.get(f"/v1/arrays/{manifest.probes.sha256}").content
        serve = time.perf_counter() - t0
        server.should_exit = True
        print(json.dumps({
            "benchmark": "service_response", "task": args.task, "n_subsets": 6 * args.pairs,
            "n_targets": task["n_targets"], "manifest_bytes": len(manifest_raw),
            "values_bytes": len(values), "probes_bytes": len(probes),
            "total_bytes": len(manifest_raw) + len(values) + len(probes),
            "seconds_to_serve": serve,
            "mb_per_second": (len(values) + len(probes)) / serve / 2**20,
            "seconds_training": training, "trainings_per_second": 6 * args.pairs / training,
        }, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
