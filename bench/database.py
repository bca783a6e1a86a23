"""The database side of a prequalification request, without the peers.

What the listener's database threads do for every message of a burst, in batches
as the coalesced writes make them: store the received message (dedupe lookup and
insert), lease it (with the asset it names), record the filed claim (check for an
existing record, insert the record and its history event), record the outcome. Each
phase's CPU per message is printed, with the raw-signature yardstick, so a change to
those paths can be measured on its own, free of the cache server's and the event
loop's noise. The full request costs more
(`pipeline_requests.py`): this is its database share.

    .venv/bin/python bench/database.py [--messages 1000] [--batch 20]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from pipeline_common import Yardstick, machine_line, setup_django

PHASES = ("store", "lease", "record", "finish")


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=20)
    args = parser.parse_args(argv)
    batch = max(1, args.batch)
    rounds = max(1, args.messages // batch)
    print(machine_line(), flush=True)
    yardstick = Yardstick()
    setup_django()

    from django.db import connection

    from assets.services import asset_generate
    from claims import batches, inbox
    from claims.models import Actor, EventActor, MessageKind, MessageOutcome

    actor = Actor(EventActor.LISTENER, "bench")
    # A fresh asset for every message: a second request for the same asset within
    # the duplicate window would be stored as an ignored duplicate, never leased.
    assets = asset_generate(count=batch * (rounds + 5))
    spent = dict.fromkeys(PHASES, 0.0)

    def one_round(index: int, *, count: bool) -> int:
        chunk = assets[index * batch : (index + 1) * batch]
        clock = time.process_time
        start = clock()
        rows = inbox.inbound_record_many(
            [
                (
                    "bench.prequalification.exchange",
                    json.dumps({"did": a.did, "n": f"{index}"}).encode(),
                )
                for a in chunk
            ],
            kind=MessageKind.UNKNOWN,
            listener="bench",
        )
        stored = clock()
        leased = inbox.inbound_lease_due_with_assets(limit=batch, lease_seconds=30)
        leased_at = clock()
        recorded = batches.claim_record_requested_many(
            [
                batches.RequestedClaim(
                    asset=a,
                    claim_id=str(uuid.uuid4()),
                    role="bench.roles.app.apps.org.iam.ewc",
                    role_version=1,
                    actor=actor,
                    details={"already_existed": False},
                )
                for a in chunk
            ]
        )
        recorded_at = clock()
        batches.inbound_finish_many(
            [
                batches.Finish(
                    message_id=row.pk,
                    outcome=MessageOutcome.PROCESSED,
                    reason="filed",
                    record_id=record.pk,
                )
                for row, (record, _) in zip(rows, recorded, strict=True)
            ]
        )
        if count:
            spent["store"] += stored - start
            spent["lease"] += leased_at - stored
            spent["record"] += recorded_at - leased_at
            spent["finish"] += clock() - recorded_at
        return len(leased.messages)

    for index in range(5):  # warm: prepared statements, caches
        one_round(index, count=False)
    leased = sum(one_round(5 + index, count=True) for index in range(rounds))
    messages = rounds * batch
    yardstick.close()
    total = sum(spent.values()) / messages
    print(
        f"database side of {messages} messages in batches of {batch} "
        f"({connection.vendor}; {leased} leased by the batches' own leases)"
    )
    print(f"  {yardstick.describe()}")
    for phase in PHASES:
        each = spent[phase] / messages
        print(
            f"  {phase:7s} {each * 1e6:6.0f} us CPU per message "
            f"= {yardstick.ratio(each):5.1f} raw signatures"
        )
    print(
        f"  total   {total * 1e6:6.0f} us CPU per message = "
        f"{yardstick.ratio(total):.1f} raw signatures"
    )


if __name__ == "__main__":
    main(sys.argv[1:])
