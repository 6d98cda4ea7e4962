"""``python -m vla_grpo {fit,validate,test,demos} ...``; see :mod:`vla_grpo.cli`."""
from vla_grpo.cli import main

if __name__ == "__main__":
    main()
