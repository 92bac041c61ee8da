"""Where a train job's node stands in its gang, and the torchrun flags that follow from it.

A job with `nnodes: N` runs one job process per node, each started by the worker that took that node (app/jobs/gang.py).
The worker tells the job process its place through the environment (`environment`): the node's number, N, the
rendezvous endpoint node 0 published and the rendezvous id `<job>-<attempt>`. Every process the job starts inherits
it, torchrun's ranks included, which is how the trainer knows that its node 0's first rank is the one that reports.

Node 0 hosts the c10d store (is_host=true, said outright: two nodes on one machine would both think they are the
host of a loopback endpoint). Torch's c10d rendezvous orders nodes by their address and pid, so global rank 0 may run
on any node: it writes the checkpoints, to the shared data dir, while node 0's first rank prints the lines and
metrics that become the job's log, so that log always belongs to node 0's worker.
"""

import os
from dataclasses import dataclass

from openseek_nanochat.procs import JOB_NODE_ENV as NODE_ENV

NNODES_ENV = "OPENSEEK_NANOCHAT_NNODES"
ENDPOINT_ENV = "OPENSEEK_NANOCHAT_RDZV_ENDPOINT"
RDZV_ID_ENV = "OPENSEEK_NANOCHAT_RDZV_ID"
ADDRESS_ENV = "OPENSEEK_NANOCHAT_NODE_ADDRESS"
JOIN_TIMEOUT_S = 600  # how long torchrun waits for every node to join (node 0 may still be training the tokenizer)


@dataclass(frozen=True)
class Place:
    """This node's place in a multi-node run."""

    node: int
    nnodes: int
    endpoint: str  # host:port of node 0's c10d store
    rdzv_id: str
    address: str  # this node's own address, as the other nodes reach it


def environment(place: Place) -> dict[str, str]:
    return {
        NODE_ENV: str(place.node),
        NNODES_ENV: str(place.nnodes),
        ENDPOINT_ENV: place.endpoint,
        RDZV_ID_ENV: place.rdzv_id,
        ADDRESS_ENV: place.address,
    }


def this_place() -> Place | None:
    """This process's place, or None outside a multi-node job."""
    if NNODES_ENV not in os.environ:
        return None
    return Place(
        node=int(os.environ[NODE_ENV]),
        nnodes=int(os.environ[NNODES_ENV]),
        endpoint=os.environ[ENDPOINT_ENV],
        rdzv_id=os.environ[RDZV_ID_ENV],
        address=os.environ[ADDRESS_ENV],
    )


def this_node() -> int:
    """The node number of this process (0 on one machine)."""
    value = os.environ.get(NODE_ENV, "0")
    return int(value) if value.isdigit() else 0


def torchrun_flags(nnodes: int, nproc_per_node: int) -> list[str]:
    """torchrun's flags for a job of `nnodes` nodes: `--standalone` on one, c10d rendezvous on several."""
    if nnodes == 1:
        return ["--standalone", f"--nproc_per_node={nproc_per_node}"]
    place = this_place()
    if place is None or place.nnodes != nnodes:
        raise ValueError(
            f"nnodes {nnodes}: a multi-node job runs under workers, which give each node its place "
            f"(${NNODES_ENV} and the rendezvous endpoint); submit it as a job"
        )
    return [
        f"--nnodes={nnodes}",
        f"--nproc_per_node={nproc_per_node}",
        "--rdzv-backend=c10d",
        f"--rdzv-endpoint={place.endpoint}",
        f"--rdzv-id={place.rdzv_id}",
        f"--rdzv-conf=is_host={'true' if place.node == 0 else 'false'},join_timeout={JOIN_TIMEOUT_S}",
        f"--local-addr={place.address}",
        "--max-restarts=0",  # a lost node ends the attempt; the queue starts the next one on the nodes there are
    ]
