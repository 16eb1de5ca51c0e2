from pdfleet.cli import app

app(prog_name="pdfleet")
