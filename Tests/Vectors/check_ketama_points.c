/*
 * A second, independent check of the ketama `points` rows of hash-vectors.tsv: twemproxy's
 * point-count expression (src/hashkit/nc_ketama.c, ketama_update) evaluated by a C compiler, so
 * that its float arithmetic is C's own rather than Python's emulation of it.
 *
 *   cc -O2 -o /tmp/check_ketama_points Tests/Vectors/check_ketama_points.c -lm
 *   /tmp/check_ketama_points < Tests/Vectors/hash-vectors.tsv
 *
 * Prints the number of rows checked; exits 1 at the first disagreement.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define KETAMA_POINTS_PER_SERVER 160

int main(void) {
    static char row[1 << 16];
    int checked = 0;
    while (fgets(row, sizeof row, stdin)) {
        if (strncmp(row, "points\tketama\t", 14) != 0) continue;
        char *backends = row + 14;
        char *counts = strchr(backends, '\t');
        *counts++ = '\0';
        counts[strcspn(counts, "\n")] = '\0';
        uint32_t weight[1024], n = 0, total_weight = 0;
        for (char *spec = strtok(backends, ","); spec; spec = strtok(NULL, ",")) {
            char *equals = strchr(spec, '=');
            weight[n] = equals ? (uint32_t)atoi(equals + 1) : 1;
            total_weight += weight[n++];
        }
        char computed[8192] = "";
        for (uint32_t i = 0; i < n; i++) {
            float pct = (float)weight[i] / (float)total_weight;
            uint32_t per_server = (uint32_t)((floorf((float)(pct * KETAMA_POINTS_PER_SERVER / 4 * (float)n + 0.0000000001))) * 4);
            char one[16];
            snprintf(one, sizeof one, "%s%u", i ? "," : "", per_server);
            strcat(computed, one);
        }
        if (strcmp(computed, counts) != 0) {
            fprintf(stderr, "disagrees: %s computed %s, vectors %s\n", backends, computed, counts);
            return 1;
        }
        checked++;
    }
    printf("%d ketama points rows agree\n", checked);
    return 0;
}
