"""vharm: temporally coherent video harmonization (Huang et al., IEEE TIP 2020) that runs on a CPU."""

__version__ = "0.1.0"
