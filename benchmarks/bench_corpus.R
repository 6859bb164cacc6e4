# Times every corpus fit (tests/fixtures/corpus/corpus.json) with its R tool at default
# settings, warm: one warm-up fit, then the median of REPEATS fits, the data read once (as
# make_corpus.R reads it back). Prints one JSON object {id: seconds}. Run by
# benchmarks/bench_corpus.py:  Rscript bench_corpus.R CORPUS_DIR REPEATS [ID_REGEX]
suppressPackageStartupMessages({library(lme4); library(mgcv); library(jsonlite)})
args <- commandArgs(trailingOnly = TRUE)
dir <- args[1]; repeats <- as.integer(args[2]); pick <- if (length(args) > 2) args[3] else "."
corpus <- fromJSON(file.path(dir, "corpus.json"), simplifyVector = FALSE)
sets <- fromJSON(file.path(dir, "datasets.json"), simplifyVector = FALSE)
read_back <- function(path, factors) {
  d <- read.csv(file.path(dir, path), stringsAsFactors = FALSE)
  for (v in names(d)) {
    x <- d[[v]]
    if (is.character(x)) d[[v]] <- factor(x, levels = sort(unique(x[!is.na(x)]), method = "radix"))
    else if (v %in% factors) d[[v]] <- factor(x)
  }
  d
}
fam <- function(e) {
  if (startsWith(e$family, "Negative Binomial")) return(NULL)
  get(e$family)(link = e$link)
}
one <- function(e, d) {
  f <- as.formula(e$formula)
  w <- if (!is.null(e$weights)) d[[e$weights]] else NULL
  d$.w <- if (is.null(w)) rep(1, nrow(d)) else w
  if (e$kind == "lmm") return(lmer(f, d, REML = isTRUE(e$REML), weights = .w))
  if (e$kind == "gam") return(bam(f, data = d, family = fam(e), method = "fREML"))
  if (startsWith(e$family, "Negative Binomial")) return(glmer.nb(f, d))
  glmer(f, d, family = fam(e), nAGQ = if (is.null(e$nAGQ)) 1 else e$nAGQ, weights = .w)
}
out <- list()
for (e in corpus) {
  if (e$status != "ok" || !grepl(pick, e$id)) next
  d <- read_back(e$data, unlist(e$factors))
  ok <- tryCatch({suppressWarnings(suppressMessages(one(e, d))); TRUE}, error = function(x) FALSE)
  if (!ok) { out[[e$id]] <- NA; next }
  ts <- vapply(seq_len(repeats), function(i)
    system.time(suppressWarnings(suppressMessages(one(e, d))))[["elapsed"]], 0)
  out[[e$id]] <- median(ts)
}
cat(toJSON(out, auto_unbox = TRUE, digits = NA, na = "null"))
