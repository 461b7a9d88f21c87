"""Builder stage: importers, generation, scoring, pairing rules, round building, publishing."""
