"""Worker of tests/test_distributed.py: one rank of DistributedDataParallel training (gloo).

Launched by torchrun; every rank solves its half of a fixed batch with each gradient method and
saves the all-reduced gradients to ``<out>/grads_rank<r>.pt``.
"""

import argparse
import os
import sys

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _ddp_problem import CASES, ODEModel, batch


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    y0, targets = batch()
    per_rank = y0.shape[0] // world
    part = slice(rank * per_rank, (rank + 1) * per_rank)
    grads = {}
    for name in CASES:
        model = DistributedDataParallel(ODEModel(name))
        ys = model(y0[part])
        loss = (ys - targets[:, part]).pow(2).mean()
        loss.backward()  # DDP averages the ranks' gradients during backward
        grads[name] = [p.grad.detach().clone() for p in model.module.parameters()]
    torch.save(grads, os.path.join(args.out, f"grads_rank{rank}.pt"))
    dist.barrier()
    # gloo's teardown at interpreter exit sometimes aborts ("terminate called without an active
    # exception", about 1 run in 20 with torch 2.13 on CPU) after all the work is done and saved; leave
    # without running C++ destructors so that a finished run always exits 0.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
