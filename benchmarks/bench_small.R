# The R side of bench_small.py: lmer / glmer / glmmTMB, as a whole process or warm.
#
# Usage: Rscript benchmarks/bench_small.R MODE DATA FORMULA FAMILY TOOL REML REPEATS OUT [FACTORS]
#
# FACTORS: comma-separated columns made factors after reading (as daskmm's --factors).
# MODE "whole": read DATA, fit once, write summary(fit) to OUT (what `daskmm fit` does); the
#   caller times the whole process.
# MODE "warm": read DATA, fit once untimed, then REPEATS timed fits in this session
#   (system.time, gc() before each); prints "RUN <i> <seconds>".
# MODE "cold": read DATA, one timed fit (for fits of minutes, where a warm-up fit would only
#   double the wait); prints "RUN 1 <seconds>".
# FAMILY is gaussian (lmer), binomial or poisson; TOOL is lme4 or glmmTMB; REML TRUE/FALSE.
# Always prints OBJECTIVE (-2 log-likelihood, or the REML criterion) of the last fit.
args <- commandArgs(trailingOnly = TRUE)
mode <- args[1]; path <- args[2]; form <- as.formula(args[3]); fam <- args[4]
tool <- args[5]; reml <- as.logical(args[6]); repeats <- as.integer(args[7]); out <- args[8]
factors <- if (length(args) >= 9 && nzchar(args[9])) strsplit(args[9], ",")[[1]] else character()
if (tool == "glmmTMB") {
  suppressPackageStartupMessages(library(glmmTMB))
} else {
  suppressPackageStartupMessages(library(lme4))
}
d <- read.csv(path)
for (col in names(d)) if (is.character(d[[col]]) || col %in% factors) d[[col]] <- factor(d[[col]])
fitfun <- function() {
  if (tool == "glmmTMB") {
    glmmTMB(form, data = d, family = get(fam)(), REML = fam == "gaussian" && reml)
  } else if (fam == "gaussian") {
    lmer(form, data = d, REML = reml)
  } else {
    glmer(form, data = d, family = get(fam)())
  }
}
if (mode == "whole") {
  fit <- fitfun()
  writeLines(capture.output(print(summary(fit))), out)
} else if (mode == "cold") {
  tm <- system.time(fit <- fitfun())
  cat(sprintf("RUN 1 %.6f\n", tm[["elapsed"]]))
} else {
  fit <- fitfun()
  for (i in seq_len(repeats)) {
    invisible(gc())
    tm <- system.time(fit <- fitfun())
    cat(sprintf("RUN %d %.6f\n", i, tm[["elapsed"]]))
  }
}
obj <- if (tool == "lme4" && fam == "gaussian" && reml) lme4::REMLcrit(fit) else
  -2 * as.numeric(logLik(fit))
cat(sprintf("OBJECTIVE %.15g\n", obj))
