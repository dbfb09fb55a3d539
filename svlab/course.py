"""Course tooling: nbgrader assignments, the book (Sphinx + myst-nb) and the Voila app."""

from __future__ import annotations

import argparse
import html
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path

import nbformat

from svlab.profiles import REPO_ROOT
from svlab.servers import free_port, stop_process_group, wait_for_answer

NOTEBOOKS = REPO_ROOT / "notebooks"
BUILD = REPO_ROOT / "build"
BOOK_SOURCE = REPO_ROOT / "book"
APP_NOTEBOOK = NOTEBOOKS / "07_workbench.ipynb"
APP_TEMPLATE_PATH = Path(__file__).parent / "app_template"  # holds voila/templates/svlab
EXERCISES_HEADING = "## Exercises"
INSTRUCTOR_NOTE = (
    "This is the instructor's copy: the answer cells hold a solution between `### BEGIN SOLUTION` "
    "and `### END SOLUTION`. The copy to hand out, with `raise NotImplementedError()` in their "
    "place, is made by `make assignments` "
    "(`build/assignments/release/<notebook>/<notebook>.ipynb`)."
)
# The lab extensions the app loads: Voila's own widget manager and plotly's renderer. The rest
# installed here (nbgrader's, notebook's, the lab widget manager) are built for JupyterLab's
# newer core and fail in Voila's older one, with console errors on every load.
APP_EXTENSIONS = (
    "@voila-dashboards/widgets-manager8", "@jupyter-widgets/jupyterlab-manager", "jupyterlab-plotly"
)
PLOTLY_MIME = "application/vnd.plotly.v1+json"
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"


def notebook_paths(folder: Path = NOTEBOOKS) -> list[Path]:
    """The course's notebooks in order (``NN_name.ipynb``).

    >>> [p.name for p in notebook_paths()][:1] == sorted(p.name for p in notebook_paths())[:1]
    True
    """
    return sorted(folder.glob("[0-9][0-9]_*.ipynb"))


def exercises_start(nb: nbformat.NotebookNode) -> int:
    """Index of the cell that opens the exercises (a markdown cell starting ``## Exercises``).

    The exercise cells must run on their own (they import what they use), so that grading
    executes them without re-running the lesson above.

    >>> nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x = 1"),
    ...     nbformat.v4.new_markdown_cell("## Exercises\\nTry these.")])
    >>> exercises_start(nb)
    1
    """
    for index, cell in enumerate(nb.cells):
        if cell.cell_type == "markdown" and cell.source.lstrip().startswith(EXERCISES_HEADING):
            return index
    raise ValueError(f"no markdown cell starting with {EXERCISES_HEADING!r}")


def graded_cells(nb: nbformat.NotebookNode) -> dict[str, float]:
    """The points of each autograded test cell, by its nbgrader ``grade_id``.

    >>> cell = nbformat.v4.new_code_cell("assert True")
    >>> cell.metadata["nbgrader"] = {"grade": True, "grade_id": "t1", "points": 2}
    >>> graded_cells(nbformat.v4.new_notebook(cells=[cell]))
    {'t1': 2}
    """
    points = {}
    for cell in nb.cells:
        meta = cell.metadata.get("nbgrader", {})
        if meta.get("grade") and cell.cell_type == "code":
            points[meta["grade_id"]] = meta.get("points", 0)
    return points


def _nbgrader_api(course_dir: Path, execute_all: bool = False):
    from nbgrader.apps import NbGraderAPI
    from nbgrader.converters import Autograde
    from nbgrader.coursedir import CourseDirectory
    from nbgrader.preprocessors import Execute
    from traitlets.config import Config

    class ExecuteExercises(Execute):
        """nbgrader's Execute, but only the cells from the exercises heading on."""

        def preprocess(self, nb, resources=None, km=None):
            self.first_cell = 0 if execute_all else exercises_start(nb)
            return super().preprocess(nb, resources, km)

        def preprocess_cell(self, cell, resources, index):
            if index < self.first_cell:
                return cell, resources
            return super().preprocess_cell(cell, resources, index)

    scripts = str(Path(sys.executable).parent)  # nbgrader runs the `alembic` found on PATH
    if scripts not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = scripts + os.pathsep + os.environ.get("PATH", "")
    config = Config()
    config.CourseDirectory.root = str(course_dir)
    config.Execute.timeout = 600
    config.Autograde.autograde_preprocessors = [
        ExecuteExercises if p is Execute else p
        for p in Autograde.class_traits()["autograde_preprocessors"].default()
    ]
    return NbGraderAPI(CourseDirectory(config=config), config=config)


def generate_assignments(notebooks: Sequence[Path], course_dir: Path) -> list[Path]:
    """Make one nbgrader assignment per notebook; return the student versions (no solutions).

    The source notebooks are copied to ``course_dir/source/<name>/`` without the
    `INSTRUCTOR_NOTE` of their exercise section; the student versions are written to
    ``course_dir/release/<name>/<name>.ipynb`` (solutions replaced by
    ``raise NotImplementedError()``, hidden tests removed, outputs cleared).
    """
    api = _nbgrader_api(course_dir)
    released = []
    for path in notebooks:
        name = Path(path).stem
        source = course_dir / "source" / name
        shutil.rmtree(source, ignore_errors=True)
        source.mkdir(parents=True)
        nb = nbformat.read(path, 4)
        for cell in nb.cells:
            if cell.cell_type == "markdown" and INSTRUCTOR_NOTE in cell.source:
                cell.source = cell.source.replace(INSTRUCTOR_NOTE, "").rstrip()
        nbformat.write(nb, source / f"{name}.ipynb")
        result = api.generate_assignment(name, force=True)
        if not result["success"]:
            raise RuntimeError(f"nbgrader could not generate {path}:\n{result['log']}")
        released.append(course_dir / "release" / name / f"{name}.ipynb")
    return released


def autograde(
    submissions: Sequence[Path], course_dir: Path, student: str, execute_all: bool = False
) -> dict[str, tuple[float, float]]:
    """Autograde each submitted notebook (named like its assignment): ``{name: (score, max)}``.

    Only the exercise cells are executed unless ``execute_all``; test cells are restored from
    the source versions first, as nbgrader always does.
    """
    from nbgrader.api import Gradebook

    api = _nbgrader_api(course_dir, execute_all)
    scores = {}
    for path in submissions:
        name = Path(path).stem
        submitted = course_dir / "submitted" / student / name
        shutil.rmtree(submitted, ignore_errors=True)
        submitted.mkdir(parents=True)
        shutil.copy(path, submitted / f"{name}.ipynb")
        result = api.autograde(name, student, force=True, create=True)
        if not result["success"]:
            raise RuntimeError(f"nbgrader could not autograde {path}:\n{result['log']}")
        with Gradebook(api.coursedir.db_url) as gradebook:
            graded = gradebook.find_submission_notebook(name, name, student)
            scores[name] = (graded.score, graded.max_score)
    return scores


def plotly_html(figure: dict, div_id: str) -> str:
    """HTML that draws a plotly figure JSON with the page's plotly.js (``Plotly.newPlot``).

    >>> "Plotly.newPlot" in plotly_html({"data": [], "layout": {}}, "fig-1")
    True
    """
    payload = json.dumps(figure).replace("</", "<\\/")
    return (
        f'<div class="svlab-plotly" id="{div_id}"></div>\n'
        f'<script type="application/json" id="{div_id}-json">{payload}</script>\n'
        "<script>(function () {\n"
        f'  var f = JSON.parse(document.getElementById("{div_id}-json").textContent);\n'
        f'  Plotly.newPlot("{div_id}", f.data, f.layout || {{}}, {{responsive: true}});\n'
        "})();</script>"
    )


WIDGET_NOTE = (
    '<p class="svlab-widget-note"><em>An interactive control ({name}) is shown here when the '
    "notebook runs in Jupyter or in the app (<code>make app</code>).</em></p>"
)
# What a stored widget output reads as wherever the widget itself is not there: on GitHub, and
# in Jupyter when the tab shows a saved output whose widget the kernel no longer (or never) had,
# e.g. a tab closed and reopened before saving. True in each: running the cell shows it.
WIDGET_TEXT = "[interactive {name}: run this cell to show it, in Jupyter (make lab) or the app]"


def widget_name(text: str) -> str:
    """What a stored widget output's text names: the class of a raw repr, the name inside a
    `WIDGET_TEXT`, "progress bar" for tqdm's text, else "widget".

    >>> widget_name("VBox(children=(IntSlider(value=3),))")
    'VBox'
    >>> widget_name(WIDGET_TEXT.format(name="HBox"))
    'HBox'
    >>> widget_name("tutorial_resnet:  40%|####      | 24/60 [00:03<00:05]")
    'progress bar'
    """
    prefix = WIDGET_TEXT.split("{")[0]
    if text.startswith(prefix):
        return text[len(prefix) :].split(": ")[0]
    match = re.match(r"([A-Za-z_]\w*)\(", text)
    if match:
        return match.group(1)
    return "progress bar" if "%|" in text else "widget"


def quiet_widget_outputs(nb: nbformat.NotebookNode) -> int:
    """Replace each stored widget view's plain text, a raw repr such as
    ``VBox(children=(IntSlider(...), ...))`` that GitHub and other static viewers show, with a
    one-line `WIDGET_TEXT`; return how many outputs changed. Jupyter still shows the widget.

    >>> cell = nbformat.v4.new_code_cell("w")
    >>> cell.outputs = [nbformat.v4.new_output("display_data", {WIDGET_MIME: {"model_id": "a"},
    ...     "text/plain": "VBox(children=(IntSlider(value=3),))"})]
    >>> nb = nbformat.v4.new_notebook(cells=[cell])
    >>> quiet_widget_outputs(nb), nb.cells[0].outputs[0].data["text/plain"][:17]
    (1, '[interactive VBox')
    """
    changed = 0
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            if WIDGET_MIME in data:
                text = WIDGET_TEXT.format(name=widget_name(data.get("text/plain", "widget")))
                if data.get("text/plain") != text:
                    data["text/plain"] = text
                    changed += 1
    return changed


def read_book_notebook(text: str) -> nbformat.NotebookNode:
    """myst-nb reader: a notebook whose plotly figures are HTML drawn by plotly.js offline.

    Widget views (live only in a kernel) become a short note instead of an empty box.

    >>> cell = nbformat.v4.new_code_cell("fig")
    >>> cell.outputs = [nbformat.v4.new_output("display_data", {PLOTLY_MIME: {"data": []}})]
    >>> nb = read_book_notebook(nbformat.writes(nbformat.v4.new_notebook(cells=[cell])))
    >>> sorted(nb.cells[0].outputs[0].data)
    ['text/html']
    """
    nb = nbformat.reads(text, as_version=4)
    nb.metadata.pop("widgets", None)
    figures = 0
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            if PLOTLY_MIME in data:
                figure = plotly_html(data[PLOTLY_MIME], f"svlab-fig-{figures}")
                output["data"] = {"text/html": figure}
                figures += 1
            elif WIDGET_MIME in data:
                name = html.escape(widget_name(data.get("text/plain", "widget")))
                output["data"] = {"text/html": WIDGET_NOTE.format(name=name)}
    return nb


def build_book(notebooks: Sequence[Path], out: Path) -> Path:
    """Build the notebooks, with their stored outputs (none executed), into a static site.

    ``book/`` (Sphinx config and pages) and the notebooks are assembled in ``out/src``;
    plotly.js and MathJax are copied from the installed plotly and jupyter-server-mathjax
    packages, so the pages work offline. Returns the folder of the HTML site.
    """
    import jupyter_server_mathjax
    import plotly

    src, html_dir = out / "src", out / "_build" / "html"
    shutil.rmtree(src, ignore_errors=True)
    shutil.copytree(BOOK_SOURCE, src)
    (src / "notebooks").mkdir()
    for path in notebooks:
        shutil.copy(path, src / "notebooks" / Path(path).name)
    static = src / "_static"
    static.mkdir(exist_ok=True)
    shutil.copy(Path(plotly.__file__).parent / "package_data" / "plotly.min.js", static)
    shutil.copytree(Path(jupyter_server_mathjax.__file__).parent / "static", static / "mathjax")
    command = [sys.executable, "-m", "sphinx", "-b", "html", "-E", "-q", str(src), str(html_dir)]
    subprocess.run(command, check=True, cwd=REPO_ROOT)
    return html_dir


def app_notebook(source: Path = APP_NOTEBOOK, out: Path = BUILD / "app") -> Path:
    """The app's copy of ``source``: the lesson without its exercises, written to ``out``.

    Exercises belong in Jupyter, where a learner writes the code; in the app (code hidden) a
    checking cell would only print "correct" beside nothing.

    >>> import tempfile
    >>> path = app_notebook(out=Path(tempfile.mkdtemp()))
    >>> any(c.source.startswith(EXERCISES_HEADING) for c in nbformat.read(path, 4).cells)
    False
    """
    nb = nbformat.read(source, 4)
    nb.cells = nb.cells[: exercises_start(nb)]
    out.mkdir(parents=True, exist_ok=True)
    path = out / Path(source).name
    temporary = path.with_name(f".{path.name}.tmp")
    nbformat.write(nb, temporary)
    os.replace(temporary, path)
    return path


def app_command(notebook: Path, port: int = 8866) -> list[str]:
    """The Voila command that serves ``notebook`` on loopback with its code cells hidden, in
    svlab's template (Voila's lab template without its CDN requests; see `app_environment`),
    loading only the lab extensions of `APP_EXTENSIONS`.

    >>> command = app_command(Path("app.ipynb"), port=9000)
    >>> command[-1], "jupyterlab-plotly" in command[-2]
    ('--port=9000', True)
    """
    return [
        sys.executable, "-m", "voila", str(notebook), "--no-browser", "--strip_sources=True",
        "--template=svlab", "--Voila.ip=127.0.0.1",
        f"--VoilaConfiguration.extension_allowlist={list(APP_EXTENSIONS)}", f"--port={port}",
    ]


def app_environment() -> dict[str, str]:
    """The environment for `app_command`: ``JUPYTER_PATH`` led by svlab's template folder.

    >>> app_environment()["JUPYTER_PATH"].split(os.pathsep)[0] == str(APP_TEMPLATE_PATH)
    True
    """
    paths = [str(APP_TEMPLATE_PATH), os.environ.get("JUPYTER_PATH", "")]
    return {**os.environ, "JUPYTER_PATH": os.pathsep.join(p for p in paths if p)}


def _text(file) -> str:
    """All a temporary file's bytes as text."""
    file.seek(0)
    return file.read().decode(errors="replace")


@contextmanager
def app_server(notebook: Path = APP_NOTEBOOK, port: int | None = None, start_s: float = 90):
    """Run the Voila app on `app_notebook` of ``notebook`` in its own process group; yield its
    URL; always stop it (and kernels).

    Waits (at most ``start_s`` seconds) until the server answers, not for the notebook to run:
    Voila runs the notebook when the page is requested.
    """
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    log = tempfile.TemporaryFile()
    process = subprocess.Popen(
        app_command(app_notebook(notebook), port), cwd=REPO_ROOT, start_new_session=True,
        stdout=log, stderr=subprocess.STDOUT, env=app_environment(),
    )
    try:
        wait_for_answer(process, f"{url}/voila/static/", start_s, "voila", lambda: _text(log),
                        errors_answer=True)  # any HTTP answer: the server is up
        yield url
    finally:
        stop_process_group(process)
        log.close()


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m svlab.course assignments|book|app``."""
    parser = argparse.ArgumentParser(prog="python -m svlab.course", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    assign = commands.add_parser("assignments", help="student versions + autograde of sources")
    assign.add_argument("--out", type=Path, default=BUILD / "assignments")
    assign.add_argument("--execute-all", action="store_true",
                        help="grade by running whole notebooks, not only their exercises")
    book = commands.add_parser("book", help="the notebooks as a static site")
    book.add_argument("--out", type=Path, default=BUILD / "book")
    app = commands.add_parser("app", help="serve the workbench notebook with Voila")
    app.add_argument("--port", type=int, default=8866)
    args = parser.parse_args(argv)

    if args.command == "assignments":
        notebooks = [p for p in notebook_paths() if graded_cells(nbformat.read(p, 4))]
        released = generate_assignments(notebooks, args.out)
        for path in released:
            print(f"student version: {path}")
        scores = autograde(notebooks, args.out, "instructor", args.execute_all)
        for name, (score, max_score) in scores.items():
            print(f"autograde of the source {name}: {score:g} / {max_score:g}")
        short = [name for name, (score, max_score) in scores.items() if score < max_score]
        if short:
            raise SystemExit(f"source notebooks short of full marks: {', '.join(short)}")
    elif args.command == "book":
        html_dir = build_book(notebook_paths(), args.out)
        print(f"book: {html_dir / 'index.html'}")
    else:
        command = app_command(app_notebook(), port=args.port)
        subprocess.run(command, check=True, env=app_environment())


if __name__ == "__main__":
    main()
