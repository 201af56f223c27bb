"""The study machinery on top of the maths core: a TOML config (`config`) expands into a grid of
cells (`grid`), each built into a problem, flow and integrator options (`build`), run and measured
against its flow's theory into typed records (`runner`, `records`), kept in a resumable run folder
(`store`) and drawn and tabulated (`plots`, `report`). The CLI (`flowlab.cli`) sits on top."""

from .config import ConfigError as ConfigError
from .config import Study as Study
from .config import load_config as load_config
from .grid import Cell as Cell
from .grid import expand_grid as expand_grid
from .plots import plot_run as plot_run
from .records import RunRecord as RunRecord
from .runner import run_cell as run_cell
from .runner import run_study as run_study
from .store import RunStore as RunStore
from .store import StoreError as StoreError
from .store import read_summary as read_summary
