"""A client of ``continual serve``: learn a task on the command line, serve
it, ask over HTTP.

The script starts the server itself (``--port 0``: any free port, read back
from the line the server prints) and stops it at the end.
Run: ``python examples/serve_client.py`` (needs the ``serve`` extra).
"""

import json
import subprocess
import sys
import urllib.request
from pathlib import Path

data = Path(__file__).parent / "data"
# The `continual` command, run by this Python.
continual = [sys.executable, "-m", "continual.cli"]
train = str(data / "tickets.csv")

learn = ["learn", "pools/served", "--task", "tickets", "--train", train]
subprocess.run(
    [*continual, *learn],
    check=True,
    stdout=subprocess.DEVNULL,  # its JSON line: accuracy and training time
)
server = subprocess.Popen(
    [*continual, "serve", "pools/served", "--port", "0"],
    stderr=subprocess.PIPE,
    text=True,
)
try:
    line = ""
    # Until "serving POOL (1 task(s): tickets) on http://127.0.0.1:PORT"
    while "serving" not in line:
        line = server.stderr.readline()
        if not line and server.poll() is not None:
            sys.exit(f"the server exited with code {server.returncode}")
    url = line.split(" on ")[-1].strip()

    with urllib.request.urlopen(f"{url}/tasks") as response:
        print(json.load(response))  # {'tasks': [{'name': ..., 'labels': ...}]}

    texts = ["I was charged twice", "The app crashes on start"]
    body = {"texts": texts, "task": None}  # task None: route each text
    request = urllib.request.Request(
        f"{url}/predict",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request) as response:
        for prediction in json.load(response)["predictions"]:
            task, label = prediction["task"], prediction["label"]
            print(prediction["text"], "->", task, label)
finally:
    server.terminate()
    server.wait(timeout=30)
