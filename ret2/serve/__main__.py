"""`python -m ret2.serve`: the `ret2-serve` command (`ret2.commands.serve`)."""

from ret2.commands.serve import main

if __name__ == "__main__":
    main()
