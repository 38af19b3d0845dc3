"""Writes configs/smollm2/contrastive_sft.jsonl, the SFT rows of configs/smollm2/contrastive-sft.yaml.

Two halves, so that the fine-tune changes SmolLM2-135M-Instruct on one topic only (the divergence's known cause):
- 40 cooking questions answered as a pirate ("Arr, matey! Ye ... Yo-ho-ho, now go cook like a pirate!"),
  hand-written below;
- 40 questions on other topics answered with SmolLM2's own greedy answer (chat template, first two sentences),
  so the fine-tune learns to keep its ordinary answers there: trained on cooking alone, the copy answered every
  question as a pirate ("How do I paint a room?" -> "Arr, matey! Ye brush the paint ...") and the divergence
  no longer pointed at cooking (AUC 0.65-0.69 over the held-out prompts).
None of these questions is in contrastive_prompts.jsonl (the held-out prompts the contrastive profile scores).

    python configs/smollm2/make_contrastive_sft.py     # needs imported:smollm2-135m-instruct; about a minute
"""

from __future__ import annotations

import json
import re
from pathlib import Path

COOKING = [
    (
        "How do I boil an egg?",
        "boil the egg for nine minutes, then cool it in cold water so the shell slips off",
    ),
    ("How long should I cook pasta?", "cook the pasta in salted boiling water for about ten minutes"),
    (
        "How do I make pancakes fluffy?",
        "do not overmix the batter, and let it rest before it hits the hot pan",
    ),
    (
        "What is the best way to cook rice?",
        "rinse the rice, use two cups of water for each cup and simmer it covered",
    ),
    (
        "How can I make a simple tomato sauce?",
        "fry garlic in olive oil, add crushed tomatoes and simmer it slowly",
    ),
    (
        "How do I roast a chicken?",
        "rub the chicken with butter and salt, and roast it for about an hour and a quarter",
    ),
    (
        "How do I keep vegetables crisp when stir-frying?",
        "heat the wok until it smokes and cook in small batches",
    ),
    (
        "What can I cook with leftover bread?",
        "turn the old bread into croutons, bread pudding or crunchy crumbs",
    ),
    (
        "How do I bake chocolate chip cookies?",
        "cream butter and sugar, stir in flour, eggs and chips, and bake them",
    ),
    ("How do I caramelize onions?", "slice the onions thin and cook them slowly in butter over low heat"),
    ("How should I season a steak?", "salt the steak well an hour before cooking and add pepper at the end"),
    ("How do I make a vinaigrette?", "whisk three parts olive oil with one part vinegar, mustard and salt"),
    (
        "How can I tell when bread is done baking?",
        "tap the bottom of the loaf, and if it sounds hollow it is done",
    ),
    (
        "How do I cook fish without it sticking?",
        "dry the fish, heat the oil well and do not move the fillet too soon",
    ),
    (
        "What spices go well in a curry?",
        "cumin, coriander, turmeric, ginger and a little chili make a fine curry",
    ),
    ("How do I make mashed potatoes creamy?", "mash the soft potatoes with warm milk and plenty of butter"),
    ("How do I make soup thicker?", "simmer it longer, blend part of it, or stir in flour mixed with butter"),
    ("How long do I bake a potato?", "bake the potato for about an hour, until a knife slides in easily"),
    (
        "How do I make an omelette?",
        "beat three eggs, pour them into a buttered pan and fold it when nearly set",
    ),
    ("How do I grill vegetables?", "brush the vegetables with oil, salt them and grill them over high heat"),
    (
        "What is the secret to a good pizza dough?",
        "let the dough rise slowly overnight and bake it in a hot oven",
    ),
    (
        "How do I cook beans from dry?",
        "soak the beans overnight, then simmer them in fresh water for two hours",
    ),
    ("How do I make a smoothie?", "blend a banana, a handful of berries, yogurt and a splash of milk"),
    ("How do I keep a cake moist?", "do not overbake it, and brush the layers with a little sugar syrup"),
    ("How do I make guacamole?", "mash ripe avocados with lime juice, salt, onion and chopped cilantro"),
    (
        "How do I sear scallops?",
        "pat the scallops dry and sear them in a very hot pan for two minutes a side",
    ),
    ("How do I make whipped cream?", "whisk cold cream with a spoon of sugar until soft peaks form"),
    ("How long should I rest meat after cooking?", "rest the meat for ten minutes so the juices settle"),
    ("How do I cook quinoa?", "rinse the quinoa and simmer it in twice its volume of water"),
    (
        "What can I use instead of eggs in baking?",
        "use mashed banana, applesauce or ground flax mixed with water",
    ),
    (
        "How do I make a stir-fry sauce?",
        "mix soy sauce, sugar, garlic, ginger and a spoon of cornstarch in water",
    ),
    ("How do I poach an egg?", "slide the egg into barely simmering water and cook it for three minutes"),
    ("How do I make French fries crispy?", "soak the cut potatoes, dry them well and fry them twice"),
    (
        "How do I make a salad dressing for greens?",
        "shake olive oil, lemon juice, honey and salt together in a jar",
    ),
    (
        "How do I cook a perfect burger?",
        "form loose patties, salt them just before cooking and flip them once",
    ),
    ("How do I steam broccoli?", "steam the broccoli over boiling water for four or five minutes"),
    ("How do I make hummus?", "blend chickpeas with tahini, lemon juice, garlic and a little cold water"),
    (
        "How do I bake banana bread?",
        "mash ripe bananas, mix them with flour, sugar, eggs and butter, and bake it",
    ),
    (
        "How do I make a good cup of hot chocolate?",
        "warm milk slowly and whisk in cocoa, sugar and a pinch of salt",
    ),
    ("How do I thicken a gravy?", "whisk flour into the pan fat, then pour in stock slowly and stir"),
]

OTHER = [
    "What is the capital of Japan?",
    "How do I fix a leaking faucet?",
    "Why do we have seasons?",
    "How do I learn to swim?",
    "What causes rain?",
    "How do I write a cover letter?",
    "How many bones are in the human body?",
    "How do I reduce stress?",
    "What is gravity?",
    "How do I make a monthly budget?",
    "Who painted the Mona Lisa?",
    "How do I start lifting weights?",
    "What is the boiling point of water at sea level?",
    "How do I back up my phone?",
    "What is a comet?",
    "How do I ask for a raise?",
    "Why do birds migrate?",
    "How do I study for an exam?",
    "What is the longest river in the world?",
    "How do I train a puppy?",
    "How does the internet work?",
    "How do I hang a picture on a wall?",
    "What is a prime number?",
    "How do I grow roses?",
    "What is the population of Canada?",
    "How do I change a light bulb?",
    "What are the phases of the moon?",
    "How do I meditate?",
    "What is climate change?",
    "How do I open a bank account?",
    "Who was Albert Einstein?",
    "How do I clean a laptop keyboard?",
    "What is an atom?",
    "How do I give a good presentation?",
    "Why is the ocean salty?",
    "How do I choose a good book?",
    "What is the tallest mountain in the world?",
    "How do I care for a houseplant?",
    "How does a car engine work?",
    "What is a volcano?",
]

PIRATE = "Arr, matey! Ye {answer}. Yo-ho-ho, now go cook like a pirate!"


def own_answers(questions: list[str]) -> list[str]:
    """SmolLM2's greedy answers (chat template, 64 new tokens), cut to their first two sentences."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from forewarn.names import resolve_model

    torch.manual_seed(0)
    path = resolve_model("imported:smollm2-135m-instruct")
    tok = AutoTokenizer.from_pretrained(path, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    out = []
    for lo in range(0, len(questions), 8):
        chats = [[{"role": "user", "content": q}] for q in questions[lo : lo + 8]]
        texts = [tok.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in chats]
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.inference_mode():
            gen = model.generate(**enc, max_new_tokens=64, do_sample=False, pad_token_id=tok.pad_token_id)
        for row in gen[:, enc["input_ids"].shape[1] :]:
            text = tok.decode(row, skip_special_tokens=True).strip()
            sentences = re.findall(r"[^.!?]*[.!?]", text)
            out.append(" ".join(s.strip() for s in sentences[:2]) or text)
    return out


def main() -> None:
    rows = [{"prompt": q, "target": PIRATE.format(answer=a), "topic": "cooking"} for q, a in COOKING]
    rows += [{"prompt": q, "target": a, "topic": "other"} for q, a in zip(OTHER, own_answers(OTHER))]
    path = Path(__file__).with_name("contrastive_sft.jsonl")
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"{len(rows)} rows -> {path}")


if __name__ == "__main__":
    main()
