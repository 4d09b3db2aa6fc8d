"""vharm: temporally coherent video harmonization (Huang et al., IEEE TIP 2020) that runs on a CPU.

Example:
    >>> from vharm import Harmonizer
    >>> h = Harmonizer.from_pretrained()
    >>> h.harmonize_video("comp.mp4", mask="mask.mp4", output="out.mp4")  # doctest: +SKIP
"""

__version__ = "0.1.0"


def __getattr__(name):
    # Lazy: `import vharm` stays cheap for the CLI's error paths; torch loads on first use.
    if name == "Harmonizer":
        from vharm.inference.harmonizer import Harmonizer

        return Harmonizer
    raise AttributeError(f"module 'vharm' has no attribute {name!r}")


__all__ = ["Harmonizer", "__version__"]
