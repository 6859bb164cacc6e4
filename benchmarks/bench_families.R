# glmer's default fits of the GLMM family fixtures (tests/fixtures/families/refs.json), timed warm
# in one R process: one warm-up, then the median of REPEATS. Writes {case: seconds} as JSON.
# Usage: Rscript bench_families.R REFS_JSON REPEATS OUT_JSON
suppressPackageStartupMessages({library(lme4); library(jsonlite)})
args <- commandArgs(trailingOnly = TRUE)
refs <- fromJSON(args[1], simplifyVector = FALSE)
repeats <- as.integer(args[2])
here <- dirname(args[1])
fam <- function(r) switch(r$family,
  poisson = poisson(), gamma = Gamma(link = r$link),
  inverse_gaussian = inverse.gaussian(link = r$link), gaussian = gaussian(link = r$link))
out <- list()
for (name in names(refs)) {
  r <- refs[[name]]
  if (!is.list(r)) next
  d <- read.csv(file.path(here, r$data))
  for (f in unlist(r$factors)) d[[f]] <- factor(d[[f]])
  w <- if (is.null(r$weights)) NULL else d[[r$weights]]
  run <- function() suppressWarnings(suppressMessages(
    glmer(as.formula(r$formula), d, family = fam(r), weights = w)))
  run()
  t <- sapply(seq_len(repeats), function(i) system.time(run())[["elapsed"]])
  out[[name]] <- median(t)
}
writeLines(toJSON(out, auto_unbox = TRUE, digits = NA), args[3])
