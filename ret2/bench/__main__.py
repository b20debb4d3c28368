"""`python -m ret2.bench`: the `ret2-bench` command (`ret2.commands.bench`)."""

from ret2.commands.bench import main

if __name__ == "__main__":
    main()
