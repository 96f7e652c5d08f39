"""The model-type support survey: every MoE model type of the pinned transformers checked token-exact through
LocalEngine, a split, a one-expert budget, batching and `remoe up` (`python -m remoe.survey.type_survey --all`)."""
