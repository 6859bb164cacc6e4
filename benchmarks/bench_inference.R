# The lme4 side of bench_inference.py: one lmer fit of FORMULA to CSV, then
#   profile: confint(fit, method = "profile", oldNames = FALSE)   (timed)
#   boot:    confint(fit, method = "boot", nsim = NSIM, boot.type = "perc",
#                    oldNames = FALSE)                             (timed)
#   pbtest:  pbkrtest::PBmodcomp(fit, update(fit, . ~ . - x), nsim = NSIM)   (timed, with
#            the small model's fit; prints "LRT stat p_pb")
# Prints "FIT s", "PROFILE s" / "BOOT s" and one "CI name lower upper" line per parameter.
#
#   Rscript bench_inference.R DATA.csv "y ~ x + (x | g)" profile|boot|pbtest [NSIM] [SEED]
suppressPackageStartupMessages(library(lme4))
a <- commandArgs(trailingOnly = TRUE)
d <- read.csv(a[1]); d$g <- factor(d$g)
what <- a[3]
nsim <- if (length(a) >= 4) as.integer(a[4]) else 500L
seed <- if (length(a) >= 5) as.integer(a[5]) else 1L
t0 <- proc.time()[["elapsed"]]
fit <- lmer(as.formula(a[2]), data = d)
cat("FIT", proc.time()[["elapsed"]] - t0, "\n")
t0 <- proc.time()[["elapsed"]]
if (what == "profile") {
  ci <- suppressMessages(confint(fit, method = "profile", oldNames = FALSE))
  cat("PROFILE", proc.time()[["elapsed"]] - t0, "\n")
} else if (what == "pbtest") {
  suppressPackageStartupMessages(library(pbkrtest))
  small <- update(fit, . ~ . - x)
  pb <- suppressMessages(suppressWarnings(PBmodcomp(fit, small, nsim = nsim, seed = seed)))
  cat("PBTEST", proc.time()[["elapsed"]] - t0, "\n")
  cat("LRT", sprintf("%.17g", pb$test["LRT", "stat"]), sprintf("%.17g", pb$test["PBtest", "p.value"]),
      "\n")
  quit(save = "no")
} else {
  set.seed(seed)
  ci <- suppressMessages(confint(fit, method = "boot", nsim = nsim, boot.type = "perc",
                                 oldNames = FALSE))
  cat("BOOT", proc.time()[["elapsed"]] - t0, "\n")
}
for (p in rownames(ci)) cat("CI", p, sprintf("%.17g", ci[p, 1]), sprintf("%.17g", ci[p, 2]), "\n")
