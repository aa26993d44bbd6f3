"""The flood test's receiver process: the real `Receiver` with a cheap release step.

    python -m tests.faults.flood_receiver PORT JOURNAL RELEASED [QUEUE_SIZE]

The HTTP server, the signature checks and the delivery journal are the ones `bentoship ci
webhook` runs; only the handler is swapped (as the unit tests do), so a "release" is a line
appended to RELEASED instead of an image build. SIGTERM stops it as the CLI does.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from pathlib import Path

from pipeline.flows.journal import DeliveryJournal, Outcome
from pipeline.flows.receiver import Receiver
from pipeline.flows.webhook import RegistryEvent

SECRET = "flood-webhook-secret"
RELEASE_S = 0.005  # a release takes a moment, so the queue fills under the flood


def main(argv: list[str]) -> int:
    port, journal, released = int(argv[0]), Path(argv[1]), Path(argv[2])
    queue_size = int(argv[3]) if len(argv) > 3 else 20
    lock = threading.Lock()

    def release(event: RegistryEvent) -> Outcome:
        time.sleep(RELEASE_S)
        with lock, released.open("a", encoding="utf-8") as fh:
            fh.write(f"{event.delivery_id}\n")
        return Outcome("released", f"{event.model_name}/{event.version}",
                       f"run-{event.delivery_id}")

    receiver = Receiver(SECRET, DeliveryJournal(journal), release, port=port,
                        queue_size=queue_size, retry_after_s=1,
                        echo=lambda message: None)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    receiver.start()
    print(f"receiving at {receiver.url}", flush=True)
    stop.wait()
    receiver.stop(timeout_s=60)
    print("stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
