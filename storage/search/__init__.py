"""The search language: parse a query (:mod:`.parse`, a lark grammar beside it), check it
against the field table (:mod:`.fields`) and compile it to parameterised SQL for either store
(:mod:`.compile`). The CLI, the REST API and the dashboard all go through here."""
