"""Write NCCL's init and network log of a one-rank all-reduce (the GPU machine has one
GPU; NCCL refuses two ranks on one device). tests/unit/data/nccl/h200-*.log came from:

    NCCL_DEBUG=INFO NCCL_DEBUG_SUBSYS=INIT,NET NCCL_DEBUG_FILE=$OUT/default.%h.%p.log python capture_nccl_log.py 29511
    NCCL_NET=IB NCCL_DEBUG=INFO NCCL_DEBUG_SUBSYS=INIT,NET NCCL_DEBUG_FILE=$OUT/ib.%h.%p.log python capture_nccl_log.py 29513
"""

import os
import sys

import torch
import torch.distributed as dist

os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
os.environ.setdefault("MASTER_PORT", sys.argv[1] if len(sys.argv) > 1 else "29511")
dist.init_process_group("nccl", rank=0, world_size=1, device_id=torch.device("cuda:0"))
tensor = torch.ones(1 << 20, device="cuda")
dist.all_reduce(tensor)
torch.cuda.synchronize()
print("sum", tensor[0].item(), "nccl", torch.cuda.nccl.version())
dist.destroy_process_group()
