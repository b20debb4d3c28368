"""`python -m ret2.demo`: the `ret2-demo` command (`ret2.commands.demo`)."""

from ret2.commands.demo import main

if __name__ == "__main__":
    main()
