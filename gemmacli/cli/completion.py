"""`gemmacli completion bash|zsh|fish`: completion scripts generated from the live argument parser.

Generated rather than hand-written so a new flag can never be missing from completion. Bundled schema
names are baked in when the script is printed (starting Python on every <TAB> would be too slow).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

from gemmacli.env import Environment
from gemmacli.errors import ExitStatus

SHELLS = ("bash", "zsh", "fish")
#: Options whose value is a schema: complete bundled names as well as files.
SCHEMA_OPTIONS = ("--schema", "-s")
#: Options whose value is a policy: bundled policy names as well as files.
POLICY_OPTIONS = ("--policy", "-p")
#: `gemmacli schema ACTION SCHEMA`: actions whose argument is a schema.
SCHEMA_ACTIONS = ("show", "check")
#: Options whose value is a model: the installed models (asked at <TAB> time) and folders.
MODEL_OPTIONS = ("--model", "-m")
#: `gemmacli model ACTION NAME`: actions whose argument is an installed model.
MODEL_ACTIONS = ("rm", "info", "verify")
#: Options whose value is a folder.
DIRECTORY_OPTIONS = ("--out-dir",)
#: The installed models, listed when <TAB> is pressed (they change after the script is printed).
MODELS_COMMAND = "command gemmacli model list 2>/dev/null | cut -f1"


@dataclass
class Option:
    flags: list[str]
    takes_value: bool
    choices: list[str]
    help: str
    metavar: str = ""


@dataclass
class Command:
    name: str
    help: str
    options: list[Option] = field(default_factory=list)
    children: list[Command] = field(default_factory=list)
    positionals: list[str] = field(default_factory=list)  # the choices of positional arguments


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "completion",
        help="print a shell completion script (bash, zsh, fish)",
        description="Print a completion script. Install it with one of:\n"
        "  bash: gemmacli completion bash > ~/.local/share/bash-completion/completions/gemmacli\n"
        "  zsh:  gemmacli completion zsh > ~/.zfunc/_gemmacli   (or: source <(gemmacli completion zsh))\n"
        "  fish: gemmacli completion fish > ~/.config/fish/completions/gemmacli.fish",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("shell", choices=SHELLS)
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace, env: Environment) -> ExitStatus:
    from gemmacli.cli.core import build_parser

    tree = describe(build_parser())
    script = {"bash": bash_script, "zsh": zsh_script, "fish": fish_script}[args.shell](
        tree, _schema_names(), _policy_names())
    env.write_data(script.encode("utf-8"))
    return ExitStatus.OK


def _schema_names() -> list[str]:
    try:
        from gemmacli.schema import bundled_schemas

        return sorted(bundled_schemas())
    except Exception:  # completion must print even if the schema layer is broken
        return []


def _policy_names() -> list[str]:
    try:
        from gemmacli.jobs.policy import bundled_policies

        return sorted(bundled_policies())
    except Exception:  # as above
        return []


def _subparsers(parser: argparse.ArgumentParser) -> list[tuple[str, str, argparse.ArgumentParser]]:
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help or "" for choice in action._choices_actions}
            for name, child in action.choices.items():
                found.append((name, helps.get(name, ""), child))
    return found


def describe(parser: argparse.ArgumentParser, name: str = "gemmacli", help_text: str = "") -> Command:
    """The parser as a tree of commands with their options (argparse keeps these in private fields)."""
    command = Command(name=name, help=help_text)
    for action in parser._actions:
        if not action.option_strings:
            if action.choices and not isinstance(action, argparse._SubParsersAction):
                command.positionals += [str(c) for c in action.choices]
            continue
        command.options.append(
            Option(
                flags=list(action.option_strings),
                takes_value=action.nargs != 0,
                choices=[str(c) for c in action.choices] if action.choices else [],
                help=(action.help or "").replace("%(default)s", str(action.default)),
                metavar=str(action.metavar or ""),
            )
        )
    for child_name, child_help, child in _subparsers(parser):
        command.children.append(describe(child, child_name, child_help))
    return command


def _words(command: Command) -> str:
    return " ".join(
        [child.name for child in command.children] + command.positionals
        + [f for o in command.options for f in o.flags]
    )


def _all(tree: Command) -> list[Command]:
    return [tree, *(c for child in tree.children for c in _all(child))]


def _bash_command_cases(tree: Command, schema_names: list[str]) -> list[str]:
    """`case "$key"` lines: the words each command (and each `command action`) offers."""
    cases = []
    for command in tree.children:
        cases.append(f'        {command.name}) opts="{_words(command)}";;')
        for child in command.children:
            words = _words(child)
            if command.name == "schema" and child.name in SCHEMA_ACTIONS:
                words = f"{' '.join(schema_names)} {words}"
            if command.name == "model" and child.name in MODEL_ACTIONS:
                words = f"$({MODELS_COMMAND}) {words}"
            cases.append(f'        "{command.name} {child.name}") opts="{words}";;')
    return cases


def _takes(option: Option, flags: tuple[str, ...]) -> bool:
    return any(flag in flags for flag in option.flags)


def _bash_value_action(option: Option, schema_names: list[str], policy_names: list[str]) -> str:
    """What bash offers as the value of `option`: its choices, schemas, policies, models, folders, files."""
    if option.choices:
        return f'COMPREPLY=($(compgen -W "{" ".join(option.choices)}" -- "$cur"))'
    if _takes(option, SCHEMA_OPTIONS):
        return f'COMPREPLY=($(compgen -W "{" ".join(schema_names)}" -- "$cur") $(compgen -f -- "$cur"))'
    if _takes(option, POLICY_OPTIONS):
        return f'COMPREPLY=($(compgen -W "{" ".join(policy_names)}" -- "$cur") $(compgen -f -- "$cur"))'
    if _takes(option, MODEL_OPTIONS):
        return f'COMPREPLY=($(compgen -W "$({MODELS_COMMAND})" -- "$cur") $(compgen -d -- "$cur"))'
    if _takes(option, DIRECTORY_OPTIONS):
        return 'COMPREPLY=($(compgen -d -- "$cur"))'
    if "FILE" in option.metavar:
        return 'COMPREPLY=($(compgen -f -- "$cur"))'
    return "COMPREPLY=()"  # numbers, field names, patterns: nothing sensible to offer


def _bash_value_cases(tree: Command, schema_names: list[str], policy_names: list[str]) -> list[str]:
    """`case "$prev"` lines: one per option that takes a value (the first command to declare it wins)."""
    value_cases = []
    seen: set[str] = set()
    for command in _all(tree):
        for option in command.options:
            if not option.takes_value or option.flags[0] in seen:
                continue
            seen.add(option.flags[0])
            action = _bash_value_action(option, schema_names, policy_names)
            value_cases.append(f"        {'|'.join(option.flags)}) {action}; return;;")
    return value_cases


def bash_script(tree: Command, schema_names: list[str], policy_names: list[str] | None = None) -> str:
    """A bash completion function: subcommands, their flags, flag values (choices, schemas, policies,
    installed models, folders, files)."""
    value_flags = sorted({f for c in _all(tree) for o in c.options if o.takes_value for f in o.flags})
    nested = " ".join(command.name for command in tree.children if command.children)
    choices_only = " ".join(command.name for command in tree.children if command.positionals)
    case_block = "\n".join(_bash_command_cases(tree, schema_names))
    value_block = "\n".join(_bash_value_cases(tree, schema_names, policy_names or []))
    return f"""# bash completion for gemmacli (generated by `gemmacli completion bash`)
_gemmacli() {{
    local cur="${{COMP_WORDS[COMP_CWORD]}}" prev="${{COMP_WORDS[COMP_CWORD-1]}}"
    local command="" action="" word i opts
    for ((i = 1; i < COMP_CWORD; i++)); do
        word="${{COMP_WORDS[i]}}"
        case "$word" in {"|".join(value_flags)}) ((i++)); continue;; -*) continue;; esac
        if [[ -z "$command" ]]; then command="$word"; elif [[ -z "$action" ]]; then action="$word"; fi
    done
    case "$prev" in
{value_block}
    esac
    if [[ -z "$command" ]]; then
        COMPREPLY=($(compgen -W "{_words(tree)}" -- "$cur"))
        return
    fi
    opts=""
    local key="$command"
    [[ -n "$action" ]] && key="$command $action"
    case "$key" in
{case_block}
    esac
    local words
    words="$(printf '%s\\n' $opts | grep -v '^-')"
    if [[ "$cur" == -* ]]; then
        COMPREPLY=($(compgen -W "$opts" -- "$cur"))
    elif [[ -z "$action" && " {nested} " == *" $command "* ]]; then
        COMPREPLY=($(compgen -W "$words" -- "$cur"))  # an action comes first
    elif [[ " {choices_only} " == *" $command "* ]]; then
        COMPREPLY=($(compgen -W "$words" -- "$cur"))  # one of its choices, not a file
    else
        COMPREPLY=($(compgen -W "$words" -- "$cur") $(compgen -f -- "$cur"))
    fi
}}
complete -o filenames -o bashdefault -F _gemmacli gemmacli
"""


def zsh_script(tree: Command, schema_names: list[str], policy_names: list[str] | None = None) -> str:
    """zsh runs the bash function through bashcompinit: one script to keep right instead of two."""
    return (
        "#compdef gemmacli\n# zsh completion for gemmacli (generated by `gemmacli completion zsh`)\n"
        "autoload -U +X compinit && compinit\nautoload -U +X bashcompinit && bashcompinit\n"
        + bash_script(tree, schema_names, policy_names).split("\n", 1)[1]
    )


def _fish_quote(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def fish_script(tree: Command, schema_names: list[str], policy_names: list[str] | None = None) -> str:
    """fish `complete` lines: subcommands with descriptions, flags per subcommand, flag values."""
    lines = [
        "# fish completion for gemmacli (generated by `gemmacli completion fish`)",
        "complete -c gemmacli -f",
    ]
    top = " ".join(child.name for child in tree.children)
    for child in tree.children:
        lines.append(
            f"complete -c gemmacli -n 'not __fish_seen_subcommand_from {top}' -a {child.name} "
            f"-d {_fish_quote(child.help)}"
        )
    for child in tree.children:
        condition = f"__fish_seen_subcommand_from {child.name}"
        if child.children:
            names = " ".join(grand.name for grand in child.children)
            for grand in child.children:
                lines.append(
                    f"complete -c gemmacli -n '{condition}; and not __fish_seen_subcommand_from {names}' "
                    f"-a {grand.name} -d {_fish_quote(grand.help)}"
                )
            for grand in child.children:
                grand_condition = f"{condition}; and __fish_seen_subcommand_from {grand.name}"
                if child.name == "model" and grand.name in MODEL_ACTIONS:
                    lines.append(f"complete -c gemmacli -n '{grand_condition}' -x -a '({MODELS_COMMAND})'")
                lines += _fish_options(grand, grand_condition, schema_names, policy_names or [])
        elif child.positionals:
            choices = _fish_quote(" ".join(child.positionals))
            lines.append(f"complete -c gemmacli -n '{condition}' -x -a {choices}")
        else:
            lines.append(f"complete -c gemmacli -n '{condition}' -F")
        lines += _fish_options(child, condition, schema_names, policy_names or [])
    return "\n".join(lines) + "\n"


def _fish_options(command: Command, condition: str, schema_names: list[str],
                  policy_names: list[str]) -> list[str]:
    lines = []
    for option in command.options:
        parts = [f"complete -c gemmacli -n '{condition}'"]
        for flag in option.flags:
            parts.append(f"-l {flag[2:]}" if flag.startswith("--") else f"-s {flag[1:]}")
        if option.takes_value:
            if option.choices:
                parts.append(f"-x -a {_fish_quote(' '.join(option.choices))}")
            elif _takes(option, SCHEMA_OPTIONS):
                parts.append(f"-r -F -a {_fish_quote(' '.join(schema_names))}")
            elif _takes(option, POLICY_OPTIONS):
                parts.append(f"-r -F -a {_fish_quote(' '.join(policy_names))}")
            elif _takes(option, MODEL_OPTIONS):
                parts.append(f"-x -a '({MODELS_COMMAND}; __fish_complete_directories)'")
            elif _takes(option, DIRECTORY_OPTIONS):
                parts.append("-x -a '(__fish_complete_directories)'")
            else:
                parts.append("-r -F")
        parts.append(f"-d {_fish_quote(option.help.split('(')[0].strip())}")
        lines.append(" ".join(parts))
    return lines
