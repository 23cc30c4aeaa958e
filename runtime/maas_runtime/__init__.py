"""The worker runtime inside every MaaSJob pod: builds its stage of the model and runs it with torch.distributed.

Never imports kopf. A pod runs `python -m maas_runtime.agent` (torchrun's agent, same flags and `PET_*`
variables, passing the workers' exit codes on), which starts `python -m maas_runtime` once per GPU.

Start-up contract (see maas_api.contract):
- plan: JSON at $MAAS_PLAN_PATH (default /etc/maas/plan.json), formatVersion 1 only;
- torchrun's RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, GROUP_RANK, MASTER_ADDR/PORT; the worker index
  is $MAAS_WORKER_INDEX (required; `maas_runtime.launch` numbers its own) and the process joins the process group as
  `contract.global_rank(worker, local rank)`, whatever order torchrun's rendezvous chose;
- $MAAS_PROGRESS_PORT (default 9400): `/progress` and `/metrics` on global rank 0 (train) or on each
  replica's first stage (serve, besides plan.serving.port); after the last step rank 0 keeps `/progress` up
  until it answered once with phase Finished, at most $MAAS_PROGRESS_LINGER_SECONDS (default 30);
- exit codes: 0 done, 75 retryable, 78 permanent, 1 uncaught; one `maas_runtime: exit N: reason` line on
  stderr; JSON event lines (`started`, `step`, `checkpoint`, `resumed`, `serving`, `drained`) on stdout.

Modules, one job each: plan_file (read the plan), parallel_dims (ranks, process group, DeviceMesh),
catalog_models and model (build on meta, materialise owned units), stages (stage modules and shapes),
pipeline (PipelineStage and schedules), data_parallel (FSDP2), data (samples and their order), losses,
checkpoint (DCP), progress and http_server (endpoints), train, serve, worker (start-up), profile
(`maas profile`), launch (local runs for tests and benchmarks), agent (the pod's torchrun), errors and
__main__ (exit codes).
"""
