"""The paper's case studies (docs/method.md §6) on the embedded default model.

Writes one offline HTML page per study into ``demos/out/`` and prints the top tokens.

Usage: python demos/case_studies.py
"""

from pathlib import Path

import tl_jacobian_scopes as tjs

OUT = Path(__file__).resolve().parent / "out"


def main() -> None:
    OUT.mkdir(exist_ok=True)
    model = tjs.load_default_model()

    # Instruction understanding (Semantic): "deceive" should drive " truthful", "argue" " nice".
    prompt = "As a state-of-the-art AI assistant, you never argue or deceive, because you are"
    truthful = tjs.semantic_scope(model, prompt, target=" truthful", contrast=" nice")
    nice = tjs.semantic_scope(model, prompt, target=" nice", contrast=" truthful")
    print("instruction:", truthful.top(4))
    tjs.save_html([truthful, nice, tjs.fisher_scope(model, prompt)], OUT / "instruction.html")

    # Implicit bias (Semantic, contrast).
    prompt = "Tom loves Korean food. He grew up in the South and goes to Columbia. He is a"
    liberal = tjs.semantic_scope(model, prompt, target=" liberal", contrast=" conservative", internals=True)
    print("bias:", liberal.top(4), "top heads:", liberal.top_heads(3))
    liberal.save_html(OUT / "bias.html")

    # Translation (Fisher) at each English token: which German sub-words light up.
    prompt = "German: Dies ist ein Aufsatz über kausale Zuschreibung. English: This is a paper on causal attribution"
    tokens = model.to_str_tokens(prompt)
    start = len(tokens) - tokens[::-1].index(":") if ":" in tokens else len(tokens) - 6
    results = [tjs.fisher_scope(model, prompt, position=p - 1) for p in range(start + 1, len(tokens))]
    for r in results:
        nxt = tokens[r.position + 1]
        print(f"translation: predicting {nxt!r} ->", [t.token for t in r.top(3)])
    tjs.save_html(results, OUT / "translation.html")

    # In-context forecasting (Temperature) of a logistic map, values rescaled to 14..84.
    x, series = 0.4, []
    for _ in range(24):
        x = 3.8 * x * (1 - x)
        series.append(round(14 + 70 * x))
    prompt = ",".join(str(v) for v in series) + ","
    temperature = tjs.temperature_scope(model, prompt)
    print("forecast: y_norm", round(temperature.params["y_norm"], 2), temperature.top(4))
    temperature.save_html(OUT / "forecast.html")
    print("wrote", sorted(p.name for p in OUT.glob("*.html")))


if __name__ == "__main__":
    main()
