/* test_coupling.c: additive and affine couplings through the generic checks. */
#include "../test.h"
#include "layercheck.h"

TEST(coupling_affine_generic) {
    const char *specs[] = {
        "{\"type\":\"affine_coupling\"}",
        "{\"type\":\"affine_coupling\",\"mask\":\"odd\",\"hidden\":[8],\"activation\":\"tanh\"}",
        "{\"type\":\"affine_coupling\",\"mask\":[1,1,0,0,1],\"hidden\":[6,5],\"activation\":\"elu\"}",
        "{\"type\":\"affine_coupling\",\"net\":\"resnet\",\"hidden\":[7],\"blocks\":2,\"activation\":\"tanh\"}",
    };
    for (int i = 0; i < 4; i++) {
        lc_opts o = {.D = 5, .seed = (uint64_t)i};
        CHECK(lc_check_layer(specs[i], &o) == 0);
        lc_opts oc = {.D = 5, .C = 3, .seed = (uint64_t)i + 10, .param_noise = 0.5};
        CHECK(lc_check_layer(specs[i], &oc) == 0);
    }
    lc_opts o2 = {.D = 2, .C = 1, .B = 9};
    CHECK(lc_check_layer("{\"type\":\"affine_coupling\",\"hidden\":[16,16]}", &o2) == 0);
}

TEST(coupling_additive_generic) {
    lc_opts o = {.D = 4, .seed = 3};
    CHECK(lc_check_layer("{\"type\":\"additive_coupling\",\"hidden\":[8,8]}", &o) == 0);
    lc_opts oc = {.D = 6, .C = 2, .seed = 4};
    CHECK(lc_check_layer("{\"type\":\"additive_coupling\",\"mask\":\"odd\",\"net\":\"resnet\",\"hidden\":[5],\"blocks\":1}", &oc) == 0);
}

TEST(coupling_rejects_bad_specs) {
    const char *bad[] = {
        "{\"dim\":1,\"layers\":[{\"type\":\"affine_coupling\"}]}",
        "{\"dim\":3,\"layers\":[{\"type\":\"affine_coupling\",\"mask\":[1,1,1]}]}",
        "{\"dim\":3,\"layers\":[{\"type\":\"affine_coupling\",\"mask\":[1,0]}]}",
        "{\"dim\":3,\"layers\":[{\"type\":\"affine_coupling\",\"hidden\":[0]}]}",
        "{\"dim\":3,\"layers\":[{\"type\":\"affine_coupling\",\"activation\":\"gelu\"}]}",
        "{\"dim\":3,\"layers\":[{\"type\":\"affine_coupling\",\"bogus\":1}]}",
        "{\"dim\":3,\"layers\":[{\"type\":\"affine_coupling\",\"net\":\"resnet\",\"hidden\":[4,5]}]}",
    };
    for (int i = 0; i < 7; i++) {
        nf_flow *f = (nf_flow *)1;
        char err[200] = "";
        CHECK(nf_flow_create(bad[i], &f, err, sizeof err) == NF_EINVAL);
        CHECK(f == NULL);
        CHECK_MSG(err[0] != 0, "no message for %s", bad[i]);
    }
}
