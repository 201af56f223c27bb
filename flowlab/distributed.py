"""Several processes on JAX's own multi-controller runtime (`jax.distributed`).

Start the same script in every process (SLURM `srun`, `mpirun`, or by hand), call
`initialize()` first, then use the API as on one machine: `jax.devices()` lists every process's
devices, and `ShardedGram().place(problem)` with `AdaptedFlow(CholeskySolver(gram=ShardedGram()))`
splits the rows of D over all of them (each process holds the inputs, activations and rows of Θ
of its own examples; N must be a multiple of the device count). flowlab writes no transport of
its own: collectives are XLA's (gloo between CPU processes).
"""

import os

#: environment variables read when an argument is not given, in order of precedence
ENVIRONMENT = {
    "coordinator_address": ("FLOWLAB_COORDINATOR_ADDRESS",),
    "num_processes": ("FLOWLAB_NUM_PROCESSES", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE",
                      "PMI_SIZE"),
    "process_id": ("FLOWLAB_PROCESS_ID", "SLURM_PROCID", "OMPI_COMM_WORLD_RANK", "PMI_RANK"),
}


def _from_environment(name: str):
    for variable in ENVIRONMENT[name]:
        value = os.environ.get(variable)
        if value not in (None, ""):
            return value if name == "coordinator_address" else int(value)
    return None


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, *, cpu_collectives: str = "gloo") -> dict:
    """Join this process to a multi-process JAX run.

    **Arguments:** `coordinator_address` ('host:port' of process 0), `num_processes`,
    `process_id`: each, when not given, from FLOWLAB_COORDINATOR_ADDRESS / FLOWLAB_NUM_PROCESSES /
    FLOWLAB_PROCESS_ID, then SLURM's (SLURM_NTASKS, SLURM_PROCID) and Open MPI's
    (OMPI_COMM_WORLD_SIZE, OMPI_COMM_WORLD_RANK) variables; what is still missing JAX's own
    cluster detection fills in (SLURM, Open MPI). `cpu_collectives`: the CPU collectives
    between processes ('gloo'; 'mpi' where JAX was built with it).

    **Returns:** `{"process_id", "num_processes", "local_devices", "devices"}` once joined.

    **Raises:** ValueError for a process id outside [0, num_processes); whatever
    `jax.distributed.initialize` raises when the coordinator cannot be reached.

    Call it before anything else touches JAX's backend (before the first array)."""
    import jax

    coordinator_address = coordinator_address or _from_environment("coordinator_address")
    num_processes = num_processes if num_processes is not None else _from_environment(
        "num_processes")
    process_id = process_id if process_id is not None else _from_environment("process_id")
    if num_processes is not None and process_id is not None and not (
            0 <= process_id < num_processes):
        raise ValueError(f"process_id = {process_id} must lie in [0, num_processes = "
                         f"{num_processes})")
    jax.config.update("jax_cpu_collectives_implementation", cpu_collectives)
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id)
    return {"process_id": jax.process_index(), "num_processes": jax.process_count(),
            "local_devices": jax.local_device_count(), "devices": jax.device_count()}
