from srpie_cli.cli import app

app(prog_name="srpie")
