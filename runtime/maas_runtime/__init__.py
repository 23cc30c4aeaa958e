"""The worker runtime inside every MaaSJob pod: builds its stage of the model and runs it with torch.distributed.

Never imports kopf. Started by torchrun as `python -m maas_runtime` (see maas_api.contract).
"""
