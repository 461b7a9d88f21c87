from macpo.cliutil import run_script
from macpo.eval.sandbox.measure import main

run_script("sandbox", main)
